// Chat templates: every case of tests/golden/chat_template.json (rendered by Python's jinja2, see
// scripts/make_chat_goldens.py) must come out byte for byte; plus parse errors, undefined values and whitespace
// control on small templates.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chat_template.hpp"
#include "test_util.hpp"

namespace troupe {
namespace {

using json = nlohmann::json;

std::string render_or_error(const std::string& source, const std::vector<ChatMessage>& messages = {},
                            bool add_generation_prompt = false) {
  auto t = ChatTemplate::parse(source);
  if (!t) return "PARSE ERROR: " + t.error().message;
  auto r = t->render(messages, add_generation_prompt, "<s>", "</s>");
  if (!r) return "RENDER ERROR: " + r.error().message;
  return *r;
}

// Renders a template with no messages.
std::string R(const std::string& source) { return render_or_error(source); }

}  // namespace

TEST_CASE("chat_template: golden cases from jinja2") {
  const json g = json::parse(test::read_text(test::source_path("tests/golden/chat_template.json")));
  REQUIRE(g["settings"]["trim_blocks"] == true);
  REQUIRE(g["settings"]["lstrip_blocks"] == true);
  REQUIRE(g["settings"]["keep_trailing_newline"] == false);
  int n_cases = 0, n_errors = 0;
  for (const json& t : g["templates"]) {
    const std::string name = t["name"];
    auto tmpl = ChatTemplate::parse(t["source"].get<std::string>());
    REQUIRE_MESSAGE(tmpl.has_value(), name << ": " << (tmpl ? "" : tmpl.error().message));
    for (const json& c : t["cases"]) {
      std::vector<ChatMessage> messages;
      for (const json& m : c["messages"]) messages.push_back({m["role"], m["content"]});
      auto r = tmpl->render(messages, c["add_generation_prompt"].get<bool>(), c["bos_token"].get<std::string>(),
                            c["eos_token"].get<std::string>());
      const std::string what = name + "/" + c["name"].get<std::string>() +
                               (c["add_generation_prompt"].get<bool>() ? " (generation prompt)" : "");
      ++n_cases;
      if (c.value("error", false)) {
        ++n_errors;
        CHECK_MESSAGE(!r.has_value(), what);
        if (!r) {
          CHECK_MESSAGE(r.error().kind == ErrorKind::invalid_argument, what);
          CHECK_MESSAGE(r.error().message == c["error_message"].get<std::string>(), what);
        }
        continue;
      }
      REQUIRE_MESSAGE(r.has_value(), what << ": " << (r ? "" : r.error().message));
      CHECK_MESSAGE(*r == c["rendered"].get<std::string>(), what);
    }
  }
  CHECK(n_cases >= 30);
  CHECK(n_errors >= 2);
}

TEST_CASE("chat_template: the model's own template renders a chat prompt") {
  // The SmolLM2 template from the golden file (read from the GGUF by the script).
  const json g = json::parse(test::read_text(test::source_path("tests/golden/chat_template.json")));
  auto tmpl = ChatTemplate::parse(g["templates"][0]["source"].get<std::string>());
  REQUIRE(tmpl.has_value());
  ChatTemplate copy = *tmpl;  // copies share the parsed program
  auto r = copy.render({{"user", "Hi"}}, true);
  REQUIRE(r.has_value());
  CHECK(*r ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST_CASE("chat_template: parse errors name line and column") {
  struct Case {
    const char* source;
    const char* fragment;  // expected in the message
  };
  const Case cases[] = {
      {"{% if x %}never closed", "line 1, column 1"},
      {"text\n  {% for m in messages %}{{ m }}", "line 2, column 3"},
      {"a\nb {% frobnicate %}", "line 2, column 3: unknown tag 'frobnicate'"},
      {"{{ x ", "line 1, column 1"},
      {"{{ 'unterminated }}", "unterminated string"},
      {"{# no end", "comment"},
      {"{% endif %}", "unexpected 'endif'"},
      {"{% macro m() %}{% endmacro %}", "unsupported construct"},
      {"{{ x | nosuchfilter }}", "no filter named 'nosuchfilter'"},
      {"{{ x is nosuchtest }}", "no test named 'nosuchtest'"},
      {"{{ 1.5 }}", "unsupported construct: float"},
      {"{{ (1, 2) }}", "unsupported construct: tuple"},
      {"{{ x ] }}", "unexpected ']'"},
      {"{% break %}", "outside of a loop"},
  };
  for (const Case& c : cases) {
    auto t = ChatTemplate::parse(c.source);
    REQUIRE_MESSAGE(!t.has_value(), c.source);
    CHECK_MESSAGE(t.error().kind == ErrorKind::invalid_model, c.source);
    CHECK_MESSAGE(t.error().message.find(c.fragment) != std::string::npos, c.source << " -> " << t.error().message);
  }
}

TEST_CASE("chat_template: undefined variables render empty and are falsy") {
  CHECK(R("[{{ nothing }}]") == "[]");
  CHECK(R("{% if nothing %}yes{% else %}no{% endif %}") == "no");
  CHECK(R("{{ nothing is defined }} {{ nothing is not defined }}") == "False True");
  CHECK(R("{{ nothing | default('d') }} {{ nothing | length }} [{{ nothing | trim }}]") == "d 0 []");
  CHECK(R("{% for x in nothing %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(R("{{ nothing ~ 'a' }} {{ nothing == nothing }} {{ 'a' in nothing }}") == "a True False");
  // messages[0] of an empty list is undefined; taking its ['role'] is an error (as in jinja2).
  CHECK(R("{{ messages[0]['role'] is defined }}").rfind("RENDER ERROR", 0) == 0);
  CHECK(R("{{ {'a': 1}.b }}|{{ none.b }}") == "|");
  // Attribute access, arithmetic and ordering on undefined are errors, as in jinja2.
  CHECK(R("{{ nothing.attr }}").rfind("RENDER ERROR: chat template: line 1, column", 0) == 0);
  CHECK(R("{{ nothing + 1 }}").find("'nothing' is undefined") != std::string::npos);
  CHECK(R("{{ nothing < 1 }}").find("'nothing' is undefined") != std::string::npos);
}

TEST_CASE("chat_template: raise_exception and runtime errors") {
  auto t = ChatTemplate::parse(
      "{% if messages | length == 0 %}{{ raise_exception('need ' ~ 1 ~ ' message') }}{% endif %}ok");
  REQUIRE(t.has_value());
  auto r = t->render({}, false);
  REQUIRE(!r.has_value());
  CHECK(r.error().kind == ErrorKind::invalid_argument);
  CHECK(r.error().message == "need 1 message");
  CHECK(*t->render({{"user", "x"}}, false) == "ok");
  CHECK(R("{{ 1 + 'a' }}").find("unsupported operand type(s) for +: 'int' and 'str'") != std::string::npos);
  CHECK(R("{{ 'a' < 1 }}").find("not supported between instances of 'str' and 'int'") != std::string::npos);
  CHECK(R("{{ 1 // 0 }}").find("division") != std::string::npos);
  CHECK(R("{{ 2 ** 62 }} {{ 3 ** 5 }}") == "4611686018427387904 243");
  CHECK(R("{{ 2 ** 64 }}").find("integer overflow") != std::string::npos);
  CHECK(R("{{ 9223372036854775807 + 1 }}").find("integer overflow") != std::string::npos);
}

TEST_CASE("chat_template: hostile templates fail cleanly") {
  // Deep nesting is a parse error, not a stack overflow.
  CHECK(R("{{ " + std::string(100000, '[') + " }}").find("PARSE ERROR") == 0);
  CHECK(R("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}").find("nesting too deep") !=
        std::string::npos);
  std::string nested;
  for (int k = 0; k < 1000; ++k) nested += "{% if true %}";
  CHECK(R(nested).find("nesting too deep") != std::string::npos);
  // Work and output are bounded.
  CHECK(R("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
            .find("too many loop iterations") != std::string::npos);
  CHECK(R("{{ 'x' * 1000000000000 }}").find("too large") != std::string::npos);
  CHECK(R("{{ range(1000000) }}").find("range too big") != std::string::npos);
}

TEST_CASE("chat_template: whitespace control") {
  // - strips all whitespace (newlines too) on its side.
  CHECK(R("a  \n {{- 'b' -}} \n  c") == "abc");
  CHECK(R("a \n{%- if true -%}\n b \n{%- endif -%}\n c") == "abc");
  CHECK(R("a {#- comment -#} b") == "ab");
  // trim_blocks: one newline after a block tag or comment goes; not after {{ }}.
  CHECK(R("{% if true %}\nx\n{% endif %}\ny") == "x\ny");
  CHECK(R("{# c #}\nx") == "x");
  CHECK(R("{{ 'v' }}\nx") == "v\nx");
  CHECK(R("{% if true %}\n\nx{% endif %}") == "\nx");
  // lstrip_blocks: indentation before a block tag on its own line goes; not before {{ }}, not mid-line.
  CHECK(R("  {% if true %}\n    x\n  {% endif %}\ny") == "    x\ny");
  CHECK(R("  {{ 'v' }}") == "  v");
  CHECK(R("a  {% if true %}b{% endif %}") == "a  b");
  // + turns the stripping off.
  CHECK(R("  {%+ if true %}x{% endif %}") == "  x");
  CHECK(R("{% if true +%}\nx{% endif %}") == "\nx");
  // keep_trailing_newline=False: one final newline of the template goes; \r\n is normalised.
  CHECK(R("x\n") == "x");
  CHECK(R("x\n\n") == "x\n");
  CHECK(R("a\r\nb\r\n") == "a\nb");
}

TEST_CASE("chat_template: expressions and loops") {
  CHECK(R("{{ [1, 'a', none, true] }} {{ {'k': 'v'} }}") == "[1, 'a', None, True] {'k': 'v'}");
  CHECK(R("{{ 'it\\'s' }} {{ \"tab\\there\" }} {{ '\\u00e9' }}") == "it's tab\there é");
  CHECK(R("{{ [1, 2, 3][-1] }} {{ [1, 2, 3][1:] }} {{ 'héllo'[1] }} {{ 'héllo' | length }}") == "3 [2, 3] é 5");
  CHECK(R("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }}") == "3 -4 2 1024 7");
  CHECK(R("{{ 1 < 2 < 3 }} {{ 'b' in 'abc' }} {{ 3 not in [1, 2] }} {{ not 0 }}") == "True True True True");
  CHECK(R("{{ 0 or 'x' }} {{ 1 and 'y' }} {{ 'a' if false else 'b' }}") == "x y b");
  CHECK(R("{% for x in [1, 2, 3] %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }},{% endfor %}") ==
        "1TrueFalse3,2FalseFalse3,3FalseTrue3,");
  CHECK(R("{% for x in [1, 2, 3, 4] if x is even %}{{ loop.index }}:{{ x }} {% endfor %}") == "1:2 2:4 ");
  CHECK(R("{% set x = 'out' %}{% for i in [1] %}{% set x = 'in' %}{{ x }}{% endfor %} {{ x }}") == "in out");
  CHECK(R("{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") ==
        "6");
  CHECK(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}") == "a=1;b=2;");
  CHECK(R("{% set s %}a{{ 1 }}b{% endset %}[{{ s }}]") == "[a1b]");
  CHECK(R("{{ ' x '.strip() }}|{{ 'a b  c'.split() }}|{{ 'abc'.startswith('ab') }}") == "x|['a', 'b', 'c']|True");
  // Python's case mappings that change the length: 'ŉ'.upper() is "ʼN", 'ß'.upper() "SS", 'İ'.lower() "i" + U+0307.
  CHECK(R("{{ 'ŉ' | upper }} {{ 'ß'.upper() }} {{ 'İ' | lower }}") == "\u02BCN SS i\u0307");
  CHECK(R("{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}") == "<s></s>False");
  // Message content is data, never template code.
  CHECK(render_or_error("{{ messages[0].content }}", {{"user", "{{ 1 + 1 }} {% if %}"}}) == "{{ 1 + 1 }} {% if %}");
}

}  // namespace troupe
