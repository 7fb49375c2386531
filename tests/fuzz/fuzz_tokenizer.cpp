// fuzz_tokenizer.cpp: libFuzzer target for the tokenizer on the default model's vocabulary (fuzz_model.hpp).
//
// Input: one flags byte, then the payload.
//   flags bit 0  add_special (BOS/EOS as the model file says)      bit 1  parse_special (special-token text -> ids)
//   flags bit 2  0: the payload is text to encode;  1: the payload is token ids to decode, two bytes each
//                (little-endian u16, mapped onto -32 .. n_vocab + 31; 0xfff0 and up give INT32_MIN / INT32_MAX)
// Checked, besides no crash, leak, hang or sanitizer report:
//   encode   every id is inside the vocabulary; well-formed UTF-8 round-trips through decode (control tokens, which
//            parse_special turns text into, are rendered back only by decode(render_special)), unless it holds an
//            byte the vocabulary has no token for (SmolLM2 has none for 04 06 13 14 16 1d c0 c1 f1 f2 f5-ff, printed at
//            start-up): such a byte is dropped, as llama.cpp drops it (found by this fuzzer; llama.cpp's ids are the
//            reference)
//   decode   IncrementalDecoder, fed one id at a time, gives exactly the pieces' bytes made well-formed: each byte
//            that cannot start or continue a character becomes U+FFFD, an incomplete character at the end one U+FFFD
//            (its contract in tokenizer.hpp, checked against an independent reference here); its output is valid
//            UTF-8 whatever the ids
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "fuzz_model.hpp"
#include "tokenizer.hpp"

namespace {

using troupe::IncrementalDecoder;
using troupe::TokenId;
using troupe::Tokenizer;
using troupe::fuzz::valid_utf8;

const char kReplacement[] = "\xEF\xBF\xBD";

// The contract of IncrementalDecoder, written independently of src/unicode.cpp.
std::string make_well_formed(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;  // continuation bytes
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    bool bad = n == 0, cut = false;
    for (size_t k = 1; !bad && k <= n; ++k) {
      if (i + k >= s.size()) {
        cut = true;
        break;
      }
      const auto d = static_cast<unsigned char>(s[i + k]);
      bad = k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF);
    }
    if (cut) {  // a well-formed start of a character that the bytes end inside
      out += kReplacement;
      break;
    }
    if (bad) {
      out += kReplacement;
      ++i;
      continue;
    }
    out.append(s, i, n + 1);
    i += n + 1;
  }
  return out;
}

// Bytes the vocabulary has no token for (GPT-2's byte-to-character table, written out here): such a byte is dropped
// from the ids, as llama.cpp drops it.
const std::string& unrepresentable() {
  static const std::string bytes = [] {
    const Tokenizer& tok = troupe::fuzz::model_tokenizer();
    std::set<std::string> texts;
    for (TokenId id = 0; id < tok.n_vocab(); ++id) texts.insert(tok.token_text(id));
    std::string out;
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      std::string utf8;  // cp < 0x800
      if (cp < 0x80) utf8 += static_cast<char>(cp);
      else utf8 += {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      if (!texts.count(utf8)) out += static_cast<char>(b);
    }
    std::fprintf(stderr, "fuzz_tokenizer: %zu bytes have no token:", out.size());
    for (const char c : out) std::fprintf(stderr, " %02x", static_cast<unsigned char>(c));
    std::fprintf(stderr, "\n");
    return out;
  }();
  return bytes;
}

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
    std::abort();
  }
}

// Streams ids through an IncrementalDecoder and checks it against the reference.
std::string stream(const Tokenizer& tok, const std::vector<TokenId>& ids) {
  IncrementalDecoder dec(tok);
  std::string out, pieces;
  for (const TokenId id : ids) {
    out += dec.push(id);
    pieces += tok.token_to_piece(id);
  }
  out += dec.flush();
  require(valid_utf8(out), "IncrementalDecoder gave ill-formed UTF-8");
  require(out == make_well_formed(pieces), "IncrementalDecoder differs from its contract");
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)unrepresentable();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Tokenizer& tok = troupe::fuzz::model_tokenizer();
  const bool add_special = data[0] & 1, parse_special = data[0] & 2, decode_mode = data[0] & 4;
  const int32_t n_vocab = tok.n_vocab();

  if (!decode_mode) {
    const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
    const std::vector<TokenId> ids = tok.encode(text, add_special, parse_special);
    for (const TokenId id : ids) require(id >= 0 && id < n_vocab, "encode gave an id outside the vocabulary");
    const std::string streamed = stream(tok, ids);
    if (valid_utf8(text) && text.find_first_of(unrepresentable()) == std::string::npos) {
      if (!parse_special) {
        require(tok.decode(ids) == text, "well-formed text does not round-trip");
        require(streamed == text, "well-formed text does not stream back");
      } else if (!add_special) {
        require(tok.decode(ids, /*render_special=*/true) == text, "text with special tokens does not round-trip");
      }
    }
    return 0;
  }

  std::vector<TokenId> ids;
  for (size_t i = 1; i + 1 < size; i += 2) {
    uint16_t v;
    std::memcpy(&v, data + i, 2);
    if (v >= 0xfff0) ids.push_back(v & 1 ? INT32_MAX : INT32_MIN);
    else ids.push_back(static_cast<TokenId>(v % static_cast<uint32_t>(n_vocab + 64)) - 32);
  }
  stream(tok, ids);
  const std::string plain = tok.decode(ids, false), special = tok.decode(ids, true);
  size_t n = plain.size() + special.size();
  for (const TokenId id : ids) {
    n += tok.token_text(id).size() + tok.token_to_piece(id, true).size();
    if (tok.is_eog(id)) require(id >= 0 && id < n_vocab, "is_eog of an id outside the vocabulary");
  }
  // what a client sends back to /tokenize is often what /detokenize gave it
  for (const TokenId id : tok.encode(special, add_special, parse_special)) {
    require(id >= 0 && id < n_vocab, "encode gave an id outside the vocabulary");
  }
  volatile size_t sink = n;  // keeps the work observable
  (void)sink;
  return 0;
}
