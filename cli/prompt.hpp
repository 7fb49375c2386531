// prompt.hpp: turning what a user typed into prompt token ids, shared by `troupe generate` and `troupe batch`.
//   load_chat_template(file)          the model's own chat template (tokenizer.chat_template), parsed
//   encode_text(tokenizer, text)      raw text, special-token text recognised, BOS/EOS as the model file says
//   encode_chat(tmpl, tokenizer, ms)  chat messages rendered with the template (generation prompt added), encoded
//   parse_logit_bias(items, n_vocab)  "TOKEN_ID=BIAS" strings from the command line
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "chat_template.hpp"
#include "error.hpp"
#include "gguf.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace troupe::cli {

Expected<ChatTemplate> load_chat_template(const GgufFile& file);

std::vector<TokenId> encode_text(const Tokenizer& tokenizer, const std::string& text);

Expected<std::vector<TokenId>> encode_chat(const ChatTemplate& tmpl, const Tokenizer& tokenizer,
                                           const std::vector<ChatMessage>& messages);

Expected<std::vector<std::pair<TokenId, float>>> parse_logit_bias(const std::vector<std::string>& items, int n_vocab);

}  // namespace troupe::cli
