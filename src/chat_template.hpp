// chat_template.hpp: renders chat messages with the model's own chat template (GGUF `tokenizer.chat_template`).
//   ChatMessage   one turn: role ("system", "user", "assistant", ...) and content
//   ChatTemplate  a parsed Jinja template; render() gives the prompt text
//
// The template runs in a small Jinja interpreter of our own (jinja.hpp) that gives byte-identical output to Python's
// jinja2 in the environment Hugging Face transformers uses for apply_chat_template:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]) with
// keep_trailing_newline=False. tests/golden/chat_template.json (scripts/make_chat_goldens.py) checks this.
//
// The template sees: messages (a list of {role, content} maps), add_generation_prompt, bos_token, eos_token, and the
// functions raise_exception(msg), range(...), namespace(...).
//
// Supported subset:
//   tags        {{ }}, {% if/elif/else/endif %}, {% for x in xs [if cond] %}...{% else %}...{% endfor %}
//               (also `for k, v in d.items()`), {% set x = e %}, {% set ns.x = e %}, {% set x %}...{% endset %},
//               {% break %}, {% continue %}, {# #}; whitespace control - and + on every tag
//   loop        loop.index, index0, revindex, revindex0, first, last, length, previtem, nextitem
//   literals    'str' "str" (Python escapes), integers, true/false/none (and True/False/None), [lists], {'k': dicts}
//   operators   a.b a['b'] a[0] a[-1] a[1:] (slices), + - * // % ** ~, == != < > <= >=, in, not in, and or not,
//               `x if c else y`
//   tests       defined undefined none string number integer boolean true false mapping sequence iterable odd even
//               divisibleby eq equalto ne in lt gt le ge
//   filters     trim length count default/d upper lower string first last join capitalize replace list int abs reverse
//   methods     str: strip lstrip rstrip upper lower startswith endswith replace split; dict: get items keys values
// Not supported (parse() reports the line and column): floats and '/', tuples, macros, call/filter/raw blocks,
// includes, other filters and tests. upper/lower know ASCII, Latin-1, Latin Extended-A, modern Greek (U+0386-U+03CE)
// and Cyrillic (U+0400-U+052F).
// Limits, so that a hostile template in a model file fails cleanly: about 100 levels of nesting (parse error), 1M loop
// iterations and 64 MiB of text per render (render error), 64-bit integers (overflow is an error).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "error.hpp"

namespace troupe {

namespace jinja {
struct Program;
}

struct ChatMessage {
  std::string role;
  std::string content;
};

class ChatTemplate {
 public:
  // Parses a Jinja template; a syntax error or an unsupported construct gives an invalid_model Error that names its
  // line and column.
  static Expected<ChatTemplate> parse(const std::string& source);

  // The prompt text. A template's raise_exception('msg') gives an invalid_argument Error whose message is msg; other
  // runtime errors (an undefined value's attribute, 1 + 'a', ...) give invalid_argument with a line and column.
  Expected<std::string> render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                               const std::string& bos_token = "", const std::string& eos_token = "") const;

 private:
  explicit ChatTemplate(std::shared_ptr<const jinja::Program> program) : program_(std::move(program)) {}

  std::shared_ptr<const jinja::Program> program_;  // immutable once parsed, so copies share it
};

}  // namespace troupe
