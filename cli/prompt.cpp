// prompt.cpp: prompt building shared by the subcommands (see prompt.hpp).
#include "prompt.hpp"

#include <spdlog/spdlog.h>

#include <stdexcept>

namespace troupe::cli {

Expected<ChatTemplate> load_chat_template(const GgufFile& file) {
  auto source = file.get_string("tokenizer.chat_template");
  if (!source) return Error{ErrorKind::invalid_argument, "chat messages need a model with tokenizer.chat_template"};
  return ChatTemplate::parse(*source);
}

std::vector<TokenId> encode_text(const Tokenizer& tokenizer, const std::string& text) {
  return tokenizer.encode(text, /*add_special=*/true, /*parse_special=*/true);
}

Expected<std::vector<TokenId>> encode_chat(const ChatTemplate& tmpl, const Tokenizer& tokenizer,
                                           const std::vector<ChatMessage>& messages) {
  auto text = tmpl.render(messages, /*add_generation_prompt=*/true, tokenizer.token_text(tokenizer.bos()),
                          tokenizer.token_text(tokenizer.eos()));
  if (!text) return text.error();
  spdlog::debug("rendered prompt:\n{}", *text);
  return encode_text(tokenizer, *text);
}

Expected<std::vector<std::pair<TokenId, float>>> parse_logit_bias(const std::vector<std::string>& items, int n_vocab) {
  std::vector<std::pair<TokenId, float>> out;
  for (const auto& item : items) {
    const size_t eq = item.find('=');
    try {
      if (eq == std::string::npos) throw std::invalid_argument(item);
      const long id = std::stol(item.substr(0, eq));
      const float bias = std::stof(item.substr(eq + 1));
      if (id < 0 || id >= n_vocab) throw std::out_of_range(item);
      out.emplace_back(static_cast<TokenId>(id), bias);
    } catch (const std::exception&) {
      return Error{ErrorKind::invalid_argument, "--logit-bias '" + item + "': expected TOKEN_ID=BIAS with an id below " +
                                                    std::to_string(n_vocab)};
    }
  }
  return out;
}

}  // namespace troupe::cli
