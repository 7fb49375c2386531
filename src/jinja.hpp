// jinja.hpp: a small Jinja interpreter for chat templates (internal to chat_template.cpp and its tests).
//   Value    a Python-like value: undefined, none, bool, int, str (UTF-8), list, dict (insertion-ordered)
//   Expr     an expression node; Stmt a statement node; Program a parsed template
//   parse    source -> Program (jinja_lexer.cpp, jinja_parse.cpp: lexer and recursive-descent parser)
//   render   Program + variables -> text (jinja_eval.cpp)
//
// The semantics follow jinja2 3.1 in the environment Hugging Face transformers uses for chat templates:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
// keep_trailing_newline=False, no autoescape. The supported subset is listed in chat_template.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "error.hpp"

namespace troupe::jinja {

// ---------------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------------

struct Value;
using List = std::vector<Value>;
using Map = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, like a Python dict

struct Value {
  enum class Kind { undefined, none, boolean, integer, string, list, map };

  Kind kind = Kind::undefined;
  bool b = false;              // boolean
  int64_t i = 0;               // integer
  std::string s;               // string (UTF-8); for undefined: the name that was looked up, for error messages
  std::shared_ptr<List> list;  // list (shared like a Python reference)
  std::shared_ptr<Map> map;    // map
  bool is_namespace = false;   // a namespace(): the one map {% set ns.x = ... %} may assign into

  static Value undefined(std::string name = "") {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = Kind::none;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::boolean;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::integer;
    v.i = x;
    return v;
  }
  static Value string(std::string x) {
    Value v;
    v.kind = Kind::string;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List items = {}) {
    Value v;
    v.kind = Kind::list;
    v.list = std::make_shared<List>(std::move(items));
    return v;
  }
  static Value make_map(Map items = {}) {
    Value v;
    v.kind = Kind::map;
    v.map = std::make_shared<Map>(std::move(items));
    return v;
  }

  bool is_undefined() const { return kind == Kind::undefined; }
  // The entry for key in a map, or nullptr.
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
};

// ---------------------------------------------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------------------------------------------

struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Expr {
  enum class Kind {
    literal,  // value
    list,     // [args...]
    dict,     // {kwargs...}
    name,     // name
    getattr,  // args[0].name
    getitem,  // args[0][args[1]]
    slice,    // args[0][args[1]:args[2]:args[3]], null parts omitted
    unary,    // name ("not", "-", "+") args[0]
    binary,   // args[0] name args[1], name one of + - * // % ** ~
    compare,  // args[0] ops[0] args[1] ops[1] args[2] ... (chained, like Python)
    logical,  // args[0] name ("and", "or") args[1]
    cond,     // args[1] if args[0] else args[2] (args[2] null: undefined)
    filter,   // args[0] | name(args[1:], kwargs)
    test,     // args[0] is [not] name(args[1:]); negated
    call,     // args[0](args[1:], kwargs)
  };

  Kind kind = Kind::literal;
  size_t pos = 0;  // offset in the (newline-normalised) source, for error messages
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Stmt {
  enum class Kind {
    text,       // text
    output,     // {{ expr }}
    if_,        // {% if conds[0] %} bodies[0] {% elif conds[1] %} bodies[1] ... {% else %} else_body
    for_,       // {% for targets in expr [if filter] %} bodies[0] {% else %} else_body
    set,        // {% set targets[0][.attr] = expr %}, or {% set targets[0] %} bodies[0] {% endset %}
    break_,     // {% break %}
    continue_,  // {% continue %}
  };

  Kind kind = Kind::text;
  size_t pos = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<ExprPtr> conds;
  std::vector<Body> bodies;
  Body else_body;
  std::vector<std::string> targets;
  std::string attr;  // set ns.attr
};

struct Program {
  std::string source;  // newline-normalised, for line/column in runtime errors
  Body body;
};

// Line and column (both from 1) of a byte offset in source.
std::pair<int, int> line_column(const std::string& source, size_t pos);

// The invalid_model Error "chat template: line L, column C: message" for a problem at pos in source.
Error syntax_error(const std::string& source, size_t pos, const std::string& message);

// Parses a template; the Error (invalid_model) names the line and column of the first problem.
Expected<std::shared_ptr<const Program>> parse(const std::string& source);

// Renders with the given top-level variables. raise_exception(msg) gives an invalid_argument Error whose message is
// msg; other runtime errors (undefined.attr, 1 + 'a', ...) give invalid_argument with jinja2's wording and a position.
Expected<std::string> render(const Program& program, const Map& variables);

// ---------------------------------------------------------------------------------------------------------------
// Python semantics (jinja_value.cpp)
// ---------------------------------------------------------------------------------------------------------------

std::string to_str(const Value& v);  // str(): what {{ v }} prints; undefined prints nothing
std::string repr(const Value& v);    // repr(): how lists and dicts print their items
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);  // ==: 1 == True, lists and dicts by value, undefined == undefined
bool is_number(const Value& v);               // int or bool
int64_t as_int(const Value& v);               // of an int or bool
const char* type_name(const Value& v);        // Python's name of the type, for error messages

// UTF-8 strings, counted in code points like Python's str.
std::vector<size_t> code_points(const std::string& s);  // byte offset of each code point, then s.size()
uint32_t decode_at(const std::string& s, size_t offset);
void append_utf8(std::string& out, uint32_t cp);
bool py_space(uint32_t cp);  // str.isspace()
// str.strip() (left and right), lstrip(), rstrip(); chars null means whitespace.
std::string py_strip(const std::string& s, bool left, bool right, const std::string* chars = nullptr);
// str.upper() / str.lower() for ASCII, Latin-1, Latin Extended-A, modern Greek (U+0386-U+03CE) and Cyrillic
// (U+0400-U+052F), with Python's 'ß' -> "SS", 'ŉ' -> "ʼN" and 'İ' -> "i̇" but without Greek final sigma; other code
// points (Latin Extended-B, archaic Greek, ligatures, ...) are unchanged.
std::string change_case(const std::string& s, bool upper);
// str.replace(from, to[, count]); an empty `from` returns s unchanged.
std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count = -1);

}  // namespace troupe::jinja
