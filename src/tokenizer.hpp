// tokenizer.hpp: byte-level BPE tokenizer ("gpt2" GGUF vocabularies) giving exactly llama.cpp's token ids.
//
//   Tokenizer::from_gguf(file)   build from tokenizer.ggml.* metadata (untrusted: every count, id and type checked)
//   encode(text, add_special, parse_special)
//                                text -> ids; add_special adds BOS/EOS as the file's add_bos/add_eos_token say;
//                                parse_special lets control/unknown tokens written in the text become their ids
//                                (user-defined tokens are always recognised, as in llama.cpp)
//   token_to_piece(id, render_special)
//                                the raw bytes of one token (may be part of a UTF-8 character); control and unknown
//                                tokens give "" unless render_special
//   decode(ids, render_special)  llama_detokenize(remove_special=false, unparse_special=render_special)
//   IncrementalDecoder           streams pieces as valid UTF-8, holding back incomplete characters
//
// Steps of encode, each as llama.cpp (src/llama-vocab.cpp, src/unicode.cpp, commit 0c1e57098bba):
//   1. special-token partition: each special token, longest first, splits every remaining text fragment;
//   2. lenient UTF-8 decoding: a byte that does not begin a sequence with the right lead/continuation bit patterns
//      becomes U+FFFD (overlong forms and surrogates are accepted; code points above U+10FFFF, which abort
//      llama.cpp, become one U+FFFD per byte here);
//   3. pre-tokenizer regexes (tokenizer.ggml.pre) applied one after another, each to every piece of the last;
//   4. byte-level BPE per piece: merges applied lowest rank first (ties: leftmost), with a priority queue over a
//      linked list of symbols, so a piece of a million letters is O(n log n).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"
#include "gguf.hpp"

namespace troupe {

using TokenId = int32_t;  // same declaration as in model.hpp

class Tokenizer {
 public:
  static Expected<Tokenizer> from_gguf(const GgufFile& file);

  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const;
  // Raw bytes of one token; "" for ids out of range, unused/undefined tokens, and control/unknown tokens unless
  // render_special.
  std::string token_to_piece(TokenId id, bool render_special = false) const;
  std::string decode(const std::vector<TokenId>& ids, bool render_special = false) const;

  int32_t n_vocab() const;
  TokenId bos() const;  // -1 when the vocabulary has none
  TokenId eos() const;  // -1 when the vocabulary has none
  // End of generation: eos, eot, eom and the control tokens llama.cpp treats as such (<|im_end|>, <|endoftext|>, ...).
  bool is_eog(TokenId id) const;
  // The vocabulary string as stored (byte-level encoded, e.g. "Ġthe"); "" for ids out of range.
  const std::string& token_text(TokenId id) const;
  // The tokenizer.ggml.pre name this tokenizer was built for ("smollm", "default", ...).
  const std::string& pre_tokenizer() const;

  struct Impl;  // defined in tokenizer.cpp

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;  // immutable after from_gguf: copies share it, encode is thread-safe
};

// Streams generated text without ever emitting half a UTF-8 character. push() returns the bytes that are complete
// so far; flush() returns the rest. The output is always valid UTF-8: bytes that cannot start or continue a
// well-formed character become U+FFFD, one per byte; an incomplete character left at flush() becomes one U+FFFD.
// Control tokens give nothing (as token_to_piece(id, false)).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}
  std::string push(TokenId id);
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;  // at most 3 bytes: the start of a character not yet complete
};

}  // namespace troupe
