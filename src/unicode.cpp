// unicode.cpp: lenient UTF-8 decoding, GPT-2 byte mapping and the PCRE2 pre-tokenizer splitter.
#include "unicode.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace troupe::unicode {

// ---- UTF-8 ----

void decode_utf8_lenient(std::string_view s, std::vector<uint32_t>& out) {
  out.clear();
  out.reserve(s.size());
  const size_t n = s.size();
  auto cont = [&](size_t i) { return i < n && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; };
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i])); };
  size_t i = 0;
  while (i < n) {
    const uint32_t c = b(i);
    if (c < 0x80) {
      out.push_back(c);
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && cont(i + 1)) {  // 110xxxxx, overlong C0/C1 accepted as llama.cpp does
      out.push_back(((c & 0x1F) << 6) | (b(i + 1) & 0x3F));
      i += 2;
    } else if ((c & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {  // surrogates accepted as llama.cpp does
      out.push_back(((c & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F));
      i += 3;
    } else if ((c & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      const uint32_t cp = ((c & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
      if (cp > 0x10FFFF) {  // llama.cpp aborts here; we treat the lead byte as invalid
        out.push_back(kReplacement);
        i += 1;
      } else {
        out.push_back(cp);
        i += 4;
      }
    } else {
      out.push_back(kReplacement);
      i += 1;
    }
  }
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp <= 0x7F) {
    out.push_back(static_cast<char>(cp));
  } else if (cp <= 0x7FF) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0xFFFF) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0x10FFFF) {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

int utf8_strict_length(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = at(i);
  if (c < 0x80) return 1;
  int len = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -1;
    const uint8_t d = at(i + k);
    if (k == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) return 0;
  }
  return len;
}

// ---- GPT-2 byte mapping ----

const std::array<uint32_t, 256>& byte_to_bpe_char() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : 256 + n++;
    }
    return t;
  }();
  return table;
}

int bpe_char_to_byte(uint32_t cp) {
  static const std::array<int16_t, 0x144> inverse = [] {
    std::array<int16_t, 0x144> t{};
    t.fill(-1);
    const auto& fwd = byte_to_bpe_char();
    for (int b = 0; b < 256; ++b) t[fwd[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

// ---- RegexSplitter ----

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { pcre2_code_free(code); }
};

Expected<RegexSplitter> RegexSplitter::create(const std::vector<std::string>& patterns) {
  RegexSplitter splitter;
  for (const auto& pattern : patterns) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    auto compiled = std::make_shared<Compiled>();
    compiled->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (!compiled->code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(error_code, buf, sizeof buf);
      return Error{ErrorKind::internal, "pre-tokenizer regex '" + pattern + "' does not compile at offset " +
                                            std::to_string(error_offset) + ": " + reinterpret_cast<char*>(buf)};
    }
    compiled->jit = pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE) == 0;
    splitter.regexes_.push_back(std::move(compiled));
  }
  return splitter;
}

namespace {

// Code points surrogates stand in for in the regex subject (PCRE2 rejects encoded surrogates). llama.cpp classes
// surrogates as control characters, and U+0080 is one too: no pattern we use tells them apart.
constexpr uint32_t kSurrogateStandIn = 0x80;

}  // namespace

void RegexSplitter::split(const std::vector<uint32_t>& cps, std::vector<size_t>& lengths) const {
  lengths.clear();
  if (cps.empty()) return;
  lengths.push_back(cps.size());
  if (regexes_.empty()) return;

  // The subject PCRE2 sees (always valid UTF-8) and, for each byte offset that starts a code point, its index.
  std::string subject;
  subject.reserve(cps.size() * 2);
  std::vector<uint32_t> cp_of_byte;
  cp_of_byte.reserve(cps.size() * 2 + 1);
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint32_t cp = (cps[i] >= 0xD800 && cps[i] <= 0xDFFF) || cps[i] > 0x10FFFF ? kSurrogateStandIn : cps[i];
    append_utf8(subject, cp);
    cp_of_byte.resize(subject.size(), static_cast<uint32_t>(i));
  }
  cp_of_byte.push_back(static_cast<uint32_t>(cps.size()));
  std::vector<size_t> byte_of_cp(cps.size() + 1);
  for (size_t b = subject.size() + 1; b-- > 0;) byte_of_cp[cp_of_byte[b]] = b;

  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  std::vector<size_t> next;
  for (const auto& regex : regexes_) {
    next.clear();
    next.reserve(lengths.size() * 2);
    size_t cp_start = 0;
    for (const size_t len : lengths) {
      const size_t b0 = byte_of_cp[cp_start], b1 = byte_of_cp[cp_start + len];
      const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + b0);
      const size_t n = b1 - b0;
      size_t pos = 0;       // search position (bytes from b0)
      size_t emitted = 0;   // end of the last piece emitted (bytes from b0)
      while (pos < n) {
        const int rc = regex->jit ? pcre2_jit_match(regex->code, base, n, pos, 0, md, nullptr)
                                  : pcre2_match(regex->code, base, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
        if (rc < 0) break;  // no match (or a matching error: the rest stays one piece)
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t m0 = ov[0], m1 = ov[1];
        if (m1 <= m0) {  // empty match: none of our patterns make one; step one code point and go on
          pos = m0 + 1;
          while (pos < n && (static_cast<uint8_t>(subject[b0 + pos]) & 0xC0) == 0x80) ++pos;
          continue;
        }
        if (m0 > emitted) next.push_back(cp_of_byte[b0 + m0] - cp_of_byte[b0 + emitted]);
        next.push_back(cp_of_byte[b0 + m1] - cp_of_byte[b0 + m0]);
        emitted = pos = m1;
      }
      if (emitted < n) next.push_back(cp_of_byte[b0 + n] - cp_of_byte[b0 + emitted]);
      cp_start += len;
    }
    lengths.swap(next);
  }
  pcre2_match_data_free(md);
}

}  // namespace troupe::unicode
