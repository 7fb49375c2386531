// unicode.hpp: the Unicode side of the tokenizer, matching llama.cpp's src/unicode.cpp.
//   decode_utf8_lenient   bytes -> code points the way llama.cpp decodes them (invalid bytes -> U+FFFD each)
//   append_utf8           code point -> UTF-8 (surrogates encoded like any other code point)
//   utf8_strict_length    for streaming: is there a complete, well-formed character here?
//   byte_to_bpe_char      GPT-2's byte-level mapping: each byte as a printable code point
//   RegexSplitter         a pre-tokenizer: PCRE2 regexes applied one after another, matches and gaps become pieces
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"

namespace troupe::unicode {

constexpr uint32_t kReplacement = 0xFFFD;

// llama.cpp's unicode_cpts_from_utf8: only the lead and continuation bit patterns are checked, so overlong forms
// and surrogates decode to their code points. A byte that does not begin such a sequence becomes U+FFFD and
// decoding resumes at the next byte. Sequences above U+10FFFF (which abort llama.cpp) are treated as invalid too.
void decode_utf8_lenient(std::string_view text, std::vector<uint32_t>& out);

// Appends the UTF-8 encoding of cp (<= 0x10FFFF; larger values append nothing).
void append_utf8(std::string& out, uint32_t cp);

// Well-formed UTF-8 (no overlong forms, surrogates or values above U+10FFFF) starting at s[i]:
//   > 0  the length of a complete character;  0  s[i] cannot start one;  -1  a valid but incomplete prefix.
int utf8_strict_length(std::string_view s, size_t i);

// GPT-2's bytes_to_unicode(): the code point standing for each byte in byte-level BPE vocabularies.
const std::array<uint32_t, 256>& byte_to_bpe_char();
// The inverse, for code points below 0x144; -1 where none.
int bpe_char_to_byte(uint32_t cp);

// Splits code points into pieces with PCRE2 regexes (UTF + UCP, JIT when available), applied one after another
// as llama.cpp's unicode_regex_split does: each regex runs on each piece of the previous split separately, and
// both its matches and the text between them become pieces. Patterns use `\s`-free classes; see tokenizer.cpp.
class RegexSplitter {
 public:
  static Expected<RegexSplitter> create(const std::vector<std::string>& patterns);

  // cps -> lengths (in code points) of consecutive pieces covering cps.
  void split(const std::vector<uint32_t>& cps, std::vector<size_t>& piece_lengths) const;

  struct Compiled;

 private:
  std::vector<std::shared_ptr<const Compiled>> regexes_;
};

}  // namespace troupe::unicode
