// chat_template.cpp: ChatTemplate over the Jinja interpreter (jinja_parse.cpp, jinja_eval.cpp).
#include "chat_template.hpp"

#include "jinja.hpp"

namespace troupe {

Expected<ChatTemplate> ChatTemplate::parse(const std::string& source) {
  auto program = jinja::parse(source);
  if (!program) return program.error();
  return ChatTemplate(std::move(*program));
}

Expected<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                           const std::string& bos_token, const std::string& eos_token) const {
  jinja::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    list.push_back(
        jinja::Value::make_map({{"role", jinja::Value::string(m.role)}, {"content", jinja::Value::string(m.content)}}));
  }
  const jinja::Map variables = {
      {"messages", jinja::Value::make_list(std::move(list))},
      {"add_generation_prompt", jinja::Value::boolean(add_generation_prompt)},
      {"bos_token", jinja::Value::string(bos_token)},
      {"eos_token", jinja::Value::string(eos_token)},
  };
  return jinja::render(*program_, variables);
}

}  // namespace troupe
