// jinja_parse.cpp: the recursive-descent parser of the Jinja subset (see jinja.hpp), over jinja_lexer's tokens.
// Expressions follow jinja2's precedence: inline if < or < and < not < comparisons < + - < ~ < * // % < ** < unary
// minus < postfix (.a [i] [a:b] (args)) < filters and tests.
#include <algorithm>
#include <initializer_list>
#include <string>

#include "jinja.hpp"
#include "jinja_lexer.hpp"

namespace troupe::jinja {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------------------------------

const char* const kFilters[] = {"trim",    "length", "count", "default", "d",       "upper",
                                "lower",   "string", "first", "last",    "join",    "capitalize",
                                "replace", "list",   "int",   "abs",     "reverse", "title"};
const char* const kTests[] = {"defined", "undefined", "none",        "string",  "number",   "integer",
                              "boolean", "true",      "false",       "mapping", "sequence", "iterable",
                              "odd",     "even",      "divisibleby", "eq",      "equalto",  "ne",
                              "in",      "lt",        "gt",          "le",      "ge"};

template <size_t N>
bool known(const char* const (&names)[N], const std::string& name) {
  for (const char* n : names) {
    if (name == n) return true;
  }
  return false;
}

// Counts one level of recursion for as long as it lives.
struct Nesting {
  explicit Nesting(int& depth) : depth_(++depth) {}
  ~Nesting() { --depth_; }
  int& depth_;
};
constexpr int kMaxDepth = 300;  // about 100 levels of parentheses or nested blocks

class Parser {
 public:
  Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  std::string error;
  size_t error_pos = 0;

  bool parse_template(Body& out) {
    std::string end;
    if (!parse_body(out, {}, end)) return false;
    return true;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    ++i_;
    return true;
  }
  std::nullptr_t fail(size_t pos, std::string message) {
    if (error.empty()) {
      error = std::move(message);
      error_pos = pos;
    }
    return nullptr;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::eof:
        return "end of template";
      case Tok::var_end:
        return "end of print statement";
      case Tok::block_end:
        return "end of statement block";
      case Tok::string:
        return "string";
      case Tok::integer:
        return "integer";
      default:
        return "'" + t.text + "'";
    }
  }
  bool expect_op(const char* op) {
    if (skip_op(op)) return true;
    fail(cur().pos, std::string("expected '") + op + "', got " + describe(cur()));
    return false;
  }
  bool expect_block_end() {
    if (cur().type == Tok::block_end) {
      ++i_;
      return true;
    }
    fail(cur().pos, "expected end of statement block, got " + describe(cur()));
    return false;
  }
  bool expect_name(std::string& out) {
    if (cur().type != Tok::name) {
      fail(cur().pos, "expected a name, got " + describe(cur()));
      return false;
    }
    out = cur().text;
    ++i_;
    return true;
  }

  // Statements until one of the end tags (at top level: until eof). On return `end` is the tag that stopped it;
  // the parser stands just after that tag's name.
  bool parse_body(Body& out, std::initializer_list<const char*> ends, std::string& end) {
    Nesting nesting(depth_);
    if (depth_ > kMaxDepth) return fail(cur().pos, "nesting too deep"), false;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::eof) {
        if (ends.size() == 0) return true;
        end.clear();
        return true;  // the caller reports the unclosed block
      }
      if (t.type == Tok::data) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::text;
        s->pos = t.pos;
        s->text = t.text;
        out.push_back(std::move(s));
        ++i_;
        continue;
      }
      if (t.type == Tok::var_begin) {
        ++i_;
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::output;
        s->pos = t.pos;
        s->expr = parse_expression();
        if (!s->expr) return false;
        if (cur().type != Tok::var_end) {
          fail(cur().pos, "expected end of print statement, got " + describe(cur()));
          return false;
        }
        ++i_;
        out.push_back(std::move(s));
        continue;
      }
      // block_begin
      size_t tag_pos = t.pos;
      ++i_;
      if (cur().type != Tok::name) {
        fail(cur().pos, "tag name expected");
        return false;
      }
      std::string name = cur().text;
      for (const char* e : ends) {
        if (name == e) {
          ++i_;
          end = name;
          return true;
        }
      }
      ++i_;
      StmtPtr s;
      if (name == "if") {
        s = parse_if(tag_pos);
      } else if (name == "for") {
        s = parse_for(tag_pos);
      } else if (name == "set") {
        s = parse_set(tag_pos);
      } else if (name == "break" || name == "continue") {
        if (loop_depth_ == 0) return fail(tag_pos, "'" + name + "' outside of a loop"), false;
        s = std::make_unique<Stmt>();
        s->kind = name == "break" ? Stmt::Kind::break_ : Stmt::Kind::continue_;
        s->pos = tag_pos;
        if (!expect_block_end()) return false;
      } else if (name == "elif" || name == "else" || name == "endif" || name == "endfor" || name == "endset") {
        return fail(tag_pos, "unexpected '" + name + "' tag"), false;
      } else if (name == "macro" || name == "call" || name == "filter" || name == "raw" || name == "block" ||
                 name == "extends" || name == "include" || name == "import" || name == "from" || name == "with" ||
                 name == "generation" || name == "autoescape" || name == "do") {
        return fail(tag_pos, "unsupported construct: the '" + name + "' tag"), false;
      } else {
        return fail(tag_pos, "unknown tag '" + name + "'"), false;
      }
      if (!s) return false;
      out.push_back(std::move(s));
    }
  }

  StmtPtr parse_if(size_t tag_pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = Stmt::Kind::if_;
    s->pos = tag_pos;
    while (true) {
      ExprPtr cond = parse_expression();
      if (!cond || !expect_block_end()) return nullptr;
      s->conds.push_back(std::move(cond));
      s->bodies.emplace_back();
      std::string end;
      if (!parse_body(s->bodies.back(), {"elif", "else", "endif"}, end)) return nullptr;
      if (end.empty()) return fail(tag_pos, "unclosed 'if' block: expected 'elif', 'else' or 'endif'");
      if (end == "elif") continue;
      if (end == "else") {
        if (!expect_block_end()) return nullptr;
        if (!parse_body(s->else_body, {"endif"}, end)) return nullptr;
        if (end.empty()) return fail(tag_pos, "unclosed 'if' block: expected 'endif'");
      }
      if (!expect_block_end()) return nullptr;
      return s;
    }
  }

  StmtPtr parse_for(size_t tag_pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = Stmt::Kind::for_;
    s->pos = tag_pos;
    do {
      std::string target;
      if (!expect_name(target)) return nullptr;
      s->targets.push_back(target);
    } while (skip_op(","));
    if (!skip_name("in")) return fail(cur().pos, "expected 'in', got " + describe(cur()));
    s->expr = parse_expression(false);  // no inline if: it would swallow the loop filter
    if (!s->expr) return nullptr;
    if (skip_name("if")) {
      s->filter = parse_expression();
      if (!s->filter) return nullptr;
    }
    if (is_name("recursive")) return fail(cur().pos, "unsupported construct: recursive loops");
    if (!expect_block_end()) return nullptr;
    s->bodies.emplace_back();
    std::string end;
    ++loop_depth_;
    bool ok = parse_body(s->bodies.back(), {"else", "endfor"}, end);
    --loop_depth_;
    if (!ok) return nullptr;
    if (end.empty()) return fail(tag_pos, "unclosed 'for' block: expected 'endfor'");
    if (end == "else") {
      if (!expect_block_end()) return nullptr;
      if (!parse_body(s->else_body, {"endfor"}, end)) return nullptr;
      if (end.empty()) return fail(tag_pos, "unclosed 'for' block: expected 'endfor'");
    }
    if (!expect_block_end()) return nullptr;
    return s;
  }

  StmtPtr parse_set(size_t tag_pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = Stmt::Kind::set;
    s->pos = tag_pos;
    std::string target;
    if (!expect_name(target)) return nullptr;
    s->targets.push_back(target);
    if (skip_op(".")) {
      if (!expect_name(s->attr)) return nullptr;
    }
    if (is_op(",")) return fail(cur().pos, "unsupported construct: tuple assignment");
    if (cur().type == Tok::block_end && s->attr.empty()) {  // {% set x %}...{% endset %}
      ++i_;
      s->bodies.emplace_back();
      std::string end;
      if (!parse_body(s->bodies.back(), {"endset"}, end)) return nullptr;
      if (end.empty()) return fail(tag_pos, "unclosed 'set' block: expected 'endset'");
      if (!expect_block_end()) return nullptr;
      return s;
    }
    if (!expect_op("=")) return nullptr;
    s->expr = parse_expression();
    if (!s->expr || !expect_block_end()) return nullptr;
    return s;
  }

  // --- expressions, in jinja2's precedence order ---

  ExprPtr make(Expr::Kind kind, size_t pos, std::string name = "") {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    e->name = std::move(name);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr = true) {
    Nesting nesting(depth_);
    if (depth_ > kMaxDepth) return fail(cur().pos, "nesting too deep");
    ExprPtr e = parse_or();
    if (!with_condexpr) return e;
    while (e && is_name("if")) {
      auto c = make(Expr::Kind::cond, cur().pos);
      ++i_;
      ExprPtr cond = parse_or();
      if (!cond) return nullptr;
      ExprPtr other;
      if (skip_name("else")) {
        other = parse_expression();
        if (!other) return nullptr;
      }
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (e && is_name("or")) {
      auto b = make(Expr::Kind::logical, cur().pos, "or");
      ++i_;
      ExprPtr r = parse_and();
      if (!r) return nullptr;
      b->args.push_back(std::move(e));
      b->args.push_back(std::move(r));
      e = std::move(b);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (e && is_name("and")) {
      auto b = make(Expr::Kind::logical, cur().pos, "and");
      ++i_;
      ExprPtr r = parse_not();
      if (!r) return nullptr;
      b->args.push_back(std::move(e));
      b->args.push_back(std::move(r));
      e = std::move(b);
    }
    return e;
  }

  ExprPtr parse_not() {
    Nesting nesting(depth_);
    if (depth_ > kMaxDepth) return fail(cur().pos, "nesting too deep");
    if (is_name("not")) {
      auto u = make(Expr::Kind::unary, cur().pos, "not");
      ++i_;
      ExprPtr operand = parse_not();
      if (!operand) return nullptr;
      u->args.push_back(std::move(operand));
      return u;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    size_t pos = cur().pos;
    ExprPtr e = parse_math1();
    if (!e) return nullptr;
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++i_;
      } else if (is_name("in")) {
        op = "in";
        ++i_;
      } else if (is_name("not") && peek().type == Tok::name && peek().text == "in") {
        op = "not in";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::compare, pos);
        cmp->args.push_back(std::move(e));
      }
      ExprPtr r = parse_math1();
      if (!r) return nullptr;
      cmp->ops.push_back(op);
      cmp->args.push_back(std::move(r));
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  ExprPtr binary(ExprPtr l, const std::string& op, size_t pos, ExprPtr r) {
    auto b = make(Expr::Kind::binary, pos, op);
    b->args.push_back(std::move(l));
    b->args.push_back(std::move(r));
    return b;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (e && (is_op("+") || is_op("-"))) {
      std::string op = cur().text;
      size_t pos = cur().pos;
      ++i_;
      ExprPtr r = parse_concat();
      if (!r) return nullptr;
      e = binary(std::move(e), op, pos, std::move(r));
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (e && is_op("~")) {
      size_t pos = cur().pos;
      ++i_;
      ExprPtr r = parse_math2();
      if (!r) return nullptr;
      e = binary(std::move(e), "~", pos, std::move(r));
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (e && (is_op("*") || is_op("/") || is_op("//") || is_op("%"))) {
      if (is_op("/")) return fail(cur().pos, "unsupported construct: '/' (true division gives floats)");
      std::string op = cur().text;
      size_t pos = cur().pos;
      ++i_;
      ExprPtr r = parse_pow();
      if (!r) return nullptr;
      e = binary(std::move(e), op, pos, std::move(r));
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (e && is_op("**")) {
      size_t pos = cur().pos;
      ++i_;
      ExprPtr r = parse_unary();
      if (!r) return nullptr;
      e = binary(std::move(e), "**", pos, std::move(r));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    Nesting nesting(depth_);
    if (depth_ > kMaxDepth) return fail(cur().pos, "nesting too deep");
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(Expr::Kind::unary, cur().pos, cur().text);
      ++i_;
      ExprPtr operand = parse_unary(false);
      if (!operand) return nullptr;
      e->args.push_back(std::move(operand));
    } else {
      e = parse_primary();
    }
    if (!e) return nullptr;
    e = parse_postfix(std::move(e));
    if (e && with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == Tok::name) {
      ++i_;
      if (t.text == "true" || t.text == "True") return literal(Value::boolean(true), t.pos);
      if (t.text == "false" || t.text == "False") return literal(Value::boolean(false), t.pos);
      if (t.text == "none" || t.text == "None") return literal(Value::none(), t.pos);
      return make(Expr::Kind::name, t.pos, t.text);
    }
    if (t.type == Tok::string) {
      std::string s;
      size_t pos = t.pos;
      while (cur().type == Tok::string) s += toks_[i_++].text;  // adjacent literals concatenate
      return literal(Value::string(std::move(s)), pos);
    }
    if (t.type == Tok::integer) {
      ++i_;
      return literal(Value::integer(t.value), t.pos);
    }
    if (is_op("(")) {
      ++i_;
      ExprPtr e = parse_expression();
      if (!e) return nullptr;
      if (is_op(",")) return fail(cur().pos, "unsupported construct: tuple");
      if (!expect_op(")")) return nullptr;
      return e;
    }
    if (is_op("[")) {
      auto e = make(Expr::Kind::list, t.pos);
      ++i_;
      while (!is_op("]")) {
        if (!e->args.empty() && !expect_op(",")) return nullptr;
        if (is_op("]")) break;
        ExprPtr item = parse_expression();
        if (!item) return nullptr;
        e->args.push_back(std::move(item));
      }
      ++i_;
      return e;
    }
    if (is_op("{")) {
      auto e = make(Expr::Kind::dict, t.pos);
      ++i_;
      while (!is_op("}")) {
        if (!e->kwargs.empty() && !expect_op(",")) return nullptr;
        if (is_op("}")) break;
        if (cur().type != Tok::string) return fail(cur().pos, "unsupported construct: dict keys must be strings");
        std::string key = cur().text;
        ++i_;
        if (!expect_op(":")) return nullptr;
        ExprPtr v = parse_expression();
        if (!v) return nullptr;
        e->kwargs.emplace_back(key, std::move(v));
      }
      ++i_;
      return e;
    }
    return fail(t.pos, "unexpected " + describe(t));
  }

  ExprPtr literal(Value v, size_t pos) {
    auto e = make(Expr::Kind::literal, pos);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (e) {
      if (is_op(".")) {
        size_t pos = cur().pos;
        ++i_;
        if (cur().type == Tok::integer) {  // a.0 is a[0]
          auto g = make(Expr::Kind::getitem, pos);
          g->args.push_back(std::move(e));
          g->args.push_back(literal(Value::integer(cur().value), cur().pos));
          ++i_;
          e = std::move(g);
          continue;
        }
        std::string attr;
        if (!expect_name(attr)) return nullptr;
        auto g = make(Expr::Kind::getattr, pos, attr);
        g->args.push_back(std::move(e));
        e = std::move(g);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        break;
      }
    }
    return e;
  }

  ExprPtr parse_subscript(ExprPtr e) {
    size_t pos = cur().pos;
    ++i_;  // [
    ExprPtr parts[3];
    int n_colons = 0;
    for (int k = 0; k < 3; ++k) {
      if (!is_op(":") && !is_op("]")) {
        parts[k] = parse_expression();
        if (!parts[k]) return nullptr;
      }
      if (k < 2 && skip_op(":")) {
        ++n_colons;
        continue;
      }
      break;
    }
    if (!expect_op("]")) return nullptr;
    if (n_colons == 0) {
      if (!parts[0]) return fail(pos, "empty subscript");
      auto g = make(Expr::Kind::getitem, pos);
      g->args.push_back(std::move(e));
      g->args.push_back(std::move(parts[0]));
      return g;
    }
    auto g = make(Expr::Kind::slice, pos);
    g->args.push_back(std::move(e));
    for (auto& p : parts) g->args.push_back(std::move(p));
    return g;
  }

  // (args, name=kwargs) appended to e.args / e.kwargs.
  bool parse_arg_list(Expr& e) {
    if (!expect_op("(")) return false;
    bool first = true;
    while (!is_op(")")) {
      if (!first) {
        if (!expect_op(",")) return false;
        if (is_op(")")) break;
      }
      first = false;
      if (cur().type == Tok::name && peek().type == Tok::op && peek().text == "=") {
        std::string key = cur().text;
        i_ += 2;
        ExprPtr v = parse_expression();
        if (!v) return false;
        e.kwargs.emplace_back(key, std::move(v));
      } else {
        if (!e.kwargs.empty()) return fail(cur().pos, "positional argument follows keyword argument"), false;
        ExprPtr v = parse_expression();
        if (!v) return false;
        e.args.push_back(std::move(v));
      }
    }
    ++i_;
    return true;
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = make(Expr::Kind::call, cur().pos);
    c->args.push_back(std::move(callee));
    if (!parse_arg_list(*c)) return nullptr;
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (e) {
      if (is_op("|")) {
        ++i_;
        size_t pos = cur().pos;
        std::string name;
        if (!expect_name(name)) return nullptr;
        if (!known(kFilters, name)) return fail(pos, "no filter named '" + name + "'");
        auto f = make(Expr::Kind::filter, pos, name);
        f->args.push_back(std::move(e));
        if (is_op("(") && !parse_arg_list(*f)) return nullptr;
        e = std::move(f);
      } else if (is_name("is")) {
        ++i_;
        bool negated = skip_name("not");
        size_t pos = cur().pos;
        std::string name;
        if (cur().type == Tok::name && (cur().text == "none" || cur().text == "true" || cur().text == "false")) {
          name = cur().text;
          ++i_;
        } else if (!expect_name(name)) {
          return nullptr;
        }
        if (!known(kTests, name)) return fail(pos, "no test named '" + name + "'");
        auto t = make(Expr::Kind::test, pos, name);
        t->negated = negated;
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          if (!parse_arg_list(*t)) return nullptr;
        } else if ((cur().type == Tok::string || cur().type == Tok::integer ||
                    (cur().type == Tok::name && cur().text != "else" && cur().text != "or" && cur().text != "and" &&
                     cur().text != "if" && cur().text != "is"))) {
          ExprPtr arg = parse_primary();
          if (!arg) return nullptr;
          arg = parse_postfix(std::move(arg));
          if (!arg) return nullptr;
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        break;
      }
    }
    return e;
  }

  std::vector<Token> toks_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;  // recursion depth, bounded so that a hostile template cannot overflow the stack
};

}  // namespace

std::pair<int, int> line_column(const std::string& source, size_t pos) {
  int line = 1;
  size_t line_start = 0;
  for (size_t k = 0; k < pos && k < source.size(); ++k) {
    if (source[k] == '\n') {
      ++line;
      line_start = k + 1;
    }
  }
  // Column in characters, not bytes: skip UTF-8 continuation bytes.
  int col = 1;
  for (size_t k = line_start; k < pos && k < source.size(); ++k) {
    if ((static_cast<unsigned char>(source[k]) & 0xC0) != 0x80) ++col;
  }
  return {line, col};
}

Error syntax_error(const std::string& source, size_t pos, const std::string& message) {
  auto [line, col] = line_column(source, pos);
  return Error{ErrorKind::invalid_model,
               "chat template: line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + message};
}

Expected<std::shared_ptr<const Program>> parse(const std::string& raw) {
  auto program = std::make_shared<Program>();
  // Newlines: \r\n and \r become \n; keep_trailing_newline=False drops one final \n.
  std::string& src = program->source;
  src.reserve(raw.size());
  for (size_t k = 0; k < raw.size(); ++k) {
    if (raw[k] == '\r') {
      src += '\n';
      if (k + 1 < raw.size() && raw[k + 1] == '\n') ++k;
    } else {
      src += raw[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();

  auto tokens = lex(src);
  if (!tokens) return tokens.error();
  Parser parser(std::move(*tokens));
  if (!parser.parse_template(program->body)) return syntax_error(src, parser.error_pos, parser.error);
  return std::shared_ptr<const Program>(std::move(program));
}

}  // namespace troupe::jinja
