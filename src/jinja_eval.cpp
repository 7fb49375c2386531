// jinja_eval.cpp: the evaluator for the Jinja subset (see jinja.hpp), with Python's semantics for the values:
// truthiness, ==, ordering, + - * // % **, str() and repr(), len() and indexing in code points, and jinja2's
// Undefined (prints empty, is falsy, iterates as empty, has length 0; attribute access, arithmetic and ordering on
// it are errors).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "jinja.hpp"

namespace troupe::jinja {

using Kind = Value::Kind;

// ---------------------------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------------------------

namespace {

// Propagates an Error out of a function returning Expected<...>.
#define JINJA_TRY(var, expr)                      \
  auto var##_result = (expr);                     \
  if (!var##_result) return var##_result.error(); \
  auto& var = *var##_result

enum class Flow { normal, break_, continue_ };

// Bounds on the work a (possibly hostile) template may ask for.
constexpr size_t kMaxOutput = size_t{64} << 20;  // bytes of rendered text, and of any one string or list
constexpr int64_t kMaxIterations = 1'000'000;    // loop iterations (and range() items) in one render

// Python's slice.indices for a sequence of length n.
void slice_indices(int64_t n, const Value& start, const Value& stop, int64_t step, int64_t& lo, int64_t& hi) {
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (v.kind == Kind::undefined || v.kind == Kind::none) return dflt;
    int64_t x = as_int(v);
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  lo = clamp(start, step > 0 ? 0 : n - 1);
  hi = clamp(stop, step > 0 ? n : -1);
}

class Evaluator {
 public:
  Evaluator(const Program& program, const Map& variables) : program_(program) { scopes_.push_back(variables); }

  Expected<std::string> run() {
    JINJA_TRY(flow, exec(program_.body));
    (void)flow;
    return std::move(out_);
  }

 private:
  Error fail(size_t pos, const std::string& message) const {
    auto [line, col] = line_column(program_.source, pos);
    return Error{ErrorKind::invalid_argument,
                 "chat template: line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + message};
  }
  Error undefined_error(size_t pos, const Value& v) const {
    return fail(pos, v.s.empty() ? "value is undefined" : v.s.front() == '\'' ? v.s : "'" + v.s + "' is undefined");
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      for (const auto& [k, v] : *it) {
        if (k == name) return v;
      }
    }
    return Value::undefined(name);
  }

  static void assign(Map& scope, const std::string& name, Value value) {
    for (auto& [k, v] : scope) {
      if (k == name) {
        v = std::move(value);
        return;
      }
    }
    scope.emplace_back(name, std::move(value));
  }

  // --- statements ---

  Expected<Flow> check_size(size_t pos) const {
    if (out_.size() > kMaxOutput) return fail(pos, "rendered text is too large");
    return Flow::normal;
  }

  Expected<Flow> exec(const Body& body) {
    for (const auto& s : body) {
      JINJA_TRY(flow, exec(*s));
      if (flow != Flow::normal) return flow;
    }
    return Flow::normal;
  }

  Expected<Flow> exec(const Stmt& s) {
    switch (s.kind) {
      case Stmt::Kind::text:
        out_ += s.text;
        return check_size(s.pos);
      case Stmt::Kind::output: {
        JINJA_TRY(v, eval(*s.expr));
        out_ += to_str(v);
        return check_size(s.pos);
      }
      case Stmt::Kind::if_: {
        for (size_t k = 0; k < s.conds.size(); ++k) {
          JINJA_TRY(c, eval(*s.conds[k]));
          if (truthy(c)) return exec(s.bodies[k]);
        }
        return exec(s.else_body);
      }
      case Stmt::Kind::for_:
        return exec_for(s);
      case Stmt::Kind::set:
        return exec_set(s);
      case Stmt::Kind::break_:
        return Flow::break_;
      case Stmt::Kind::continue_:
        return Flow::continue_;
    }
    return Flow::normal;
  }

  Expected<Value> iterate(size_t pos, const Value& v) {
    switch (v.kind) {
      case Kind::undefined:
        return Value::make_list();
      case Kind::list:
        return v;
      case Kind::string: {
        List chars;
        auto cps = code_points(v.s);
        for (size_t k = 0; k + 1 < cps.size(); ++k)
          chars.push_back(Value::string(v.s.substr(cps[k], cps[k + 1] - cps[k])));
        return Value::make_list(std::move(chars));
      }
      case Kind::map: {
        if (v.is_namespace) break;
        List keys;
        for (const auto& [k, x] : *v.map) keys.push_back(Value::string(k));
        return Value::make_list(std::move(keys));
      }
      default:
        break;
    }
    return fail(pos, std::string("'") + type_name(v) + "' object is not iterable");
  }

  Expected<bool> bind_targets(const Stmt& s, Map& scope, const Value& item) {
    if (s.targets.size() == 1) {
      assign(scope, s.targets[0], item);
      return true;
    }
    if (item.kind != Kind::list || item.list->size() != s.targets.size()) {
      return fail(s.pos, "cannot unpack " + std::string(type_name(item)) + " into " + std::to_string(s.targets.size()) +
                             " loop variables");
    }
    for (size_t k = 0; k < s.targets.size(); ++k) assign(scope, s.targets[k], (*item.list)[k]);
    return true;
  }

  Expected<Flow> exec_for(const Stmt& s) {
    JINJA_TRY(seq, eval(*s.expr));
    JINJA_TRY(items_value, iterate(s.expr->pos, seq));
    std::shared_ptr<const List> items = items_value.list;  // lists are never changed in place: share, not copy
    if (s.filter) {  // {% for x in xs if cond %}: the loop sees only the items that pass
      auto kept = std::make_shared<List>();
      for (const Value& item : *items) {
        if (++n_iterations_ > kMaxIterations) return fail(s.pos, "too many loop iterations");
        scopes_.emplace_back();
        auto bound = bind_targets(s, scopes_.back(), item);
        auto keep = bound ? eval(*s.filter) : Expected<Value>(bound.error());
        scopes_.pop_back();
        if (!keep) return keep.error();
        if (truthy(*keep)) kept->push_back(item);
      }
      items = std::move(kept);
    }
    const List& list = *items;
    const int64_t n = static_cast<int64_t>(list.size());
    // One loop object for the whole loop, updated in place (jinja2's LoopContext is also one object).
    Value loop = Value::make_map({{"index", {}},
                                  {"index0", {}},
                                  {"revindex", {}},
                                  {"revindex0", {}},
                                  {"first", {}},
                                  {"last", {}},
                                  {"length", Value::integer(n)},
                                  {"previtem", {}},
                                  {"nextitem", {}}});
    Map& fields = *loop.map;
    scopes_.emplace_back();
    for (int64_t k = 0; k < n; ++k) {
      if (++n_iterations_ > kMaxIterations) return fail(s.pos, "too many loop iterations");
      fields[0].second = Value::integer(k + 1);
      fields[1].second = Value::integer(k);
      fields[2].second = Value::integer(n - k);
      fields[3].second = Value::integer(n - k - 1);
      fields[4].second = Value::boolean(k == 0);
      fields[5].second = Value::boolean(k == n - 1);
      fields[7].second = k > 0 ? list[k - 1] : Value::undefined("there is no previous item");
      fields[8].second = k + 1 < n ? list[k + 1] : Value::undefined("there is no next item");
      Map& scope = scopes_.back();
      scope.clear();  // each iteration has its own scope, as in jinja2
      scope.emplace_back("loop", loop);
      JINJA_TRY(bound, bind_targets(s, scope, list[k]));
      (void)bound;
      JINJA_TRY(flow, exec(s.bodies[0]));  // on an error the render stops, so the scope stack need not unwind
      if (flow == Flow::break_) break;
    }
    scopes_.pop_back();
    if (n == 0) return exec(s.else_body);
    return Flow::normal;
  }

  Expected<Flow> exec_set(const Stmt& s) {
    Value value;
    if (s.expr) {
      JINJA_TRY(v, eval(*s.expr));
      value = v;
    } else {  // {% set x %}...{% endset %}
      std::string saved = std::move(out_);
      out_.clear();
      auto flow = exec(s.bodies[0]);
      std::swap(saved, out_);
      if (!flow) return flow.error();
      value = Value::string(std::move(saved));
    }
    if (s.attr.empty()) {
      assign(scopes_.back(), s.targets[0], std::move(value));
      return Flow::normal;
    }
    Value target = lookup(s.targets[0]);
    if (target.kind != Kind::map || !target.is_namespace) {
      return fail(s.pos, "cannot assign attribute on non-namespace object");
    }
    assign(*target.map, s.attr, std::move(value));
    return Flow::normal;
  }

  // --- expressions ---

  Expected<Value> eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::literal:
        return e.value;
      case Expr::Kind::list: {
        List items;
        for (const auto& a : e.args) {
          JINJA_TRY(v, eval(*a));
          items.push_back(v);
        }
        return Value::make_list(std::move(items));
      }
      case Expr::Kind::dict: {
        Map items;
        for (const auto& [k, a] : e.kwargs) {
          JINJA_TRY(v, eval(*a));
          assign(items, k, v);
        }
        return Value::make_map(std::move(items));
      }
      case Expr::Kind::name:
        return lookup(e.name);
      case Expr::Kind::getattr: {
        JINJA_TRY(obj, eval(*e.args[0]));
        if (obj.is_undefined()) return undefined_error(e.pos, obj);
        if (const Value* v = obj.find(e.name)) return *v;
        return Value::undefined("'" + std::string(type_name(obj)) + " object' has no attribute '" + e.name + "'");
      }
      case Expr::Kind::getitem: {
        JINJA_TRY(obj, eval(*e.args[0]));
        JINJA_TRY(key, eval(*e.args[1]));
        return getitem(e.pos, obj, key);
      }
      case Expr::Kind::slice:
        return eval_slice(e);
      case Expr::Kind::unary: {
        JINJA_TRY(v, eval(*e.args[0]));
        if (e.name == "not") return Value::boolean(!truthy(v));
        if (v.is_undefined()) return undefined_error(e.pos, v);
        if (!is_number(v)) return fail(e.pos, "bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
        if (e.name == "-" && as_int(v) == INT64_MIN) return fail(e.pos, "integer overflow in unary -");
        return Value::integer(e.name == "-" ? -as_int(v) : as_int(v));
      }
      case Expr::Kind::binary: {
        JINJA_TRY(a, eval(*e.args[0]));
        JINJA_TRY(b, eval(*e.args[1]));
        return binary(e.pos, e.name, a, b);
      }
      case Expr::Kind::compare: {
        JINJA_TRY(first, eval(*e.args[0]));
        Value left = first;
        for (size_t k = 0; k < e.ops.size(); ++k) {
          JINJA_TRY(right, eval(*e.args[k + 1]));
          JINJA_TRY(ok, compare(e.pos, e.ops[k], left, right));
          if (!ok) return Value::boolean(false);
          left = right;
        }
        return Value::boolean(true);
      }
      case Expr::Kind::logical: {
        JINJA_TRY(a, eval(*e.args[0]));
        if ((e.name == "and") != truthy(a)) return a;
        return eval(*e.args[1]);
      }
      case Expr::Kind::cond: {
        JINJA_TRY(c, eval(*e.args[0]));
        if (truthy(c)) return eval(*e.args[1]);
        if (e.args[2]) return eval(*e.args[2]);
        return Value::undefined();
      }
      case Expr::Kind::filter:
        return eval_filter(e);
      case Expr::Kind::test: {
        JINJA_TRY(ok, eval_test(e));
        return Value::boolean(ok != e.negated);
      }
      case Expr::Kind::call:
        return eval_call(e);
    }
    return fail(e.pos, "internal error: unknown expression");
  }

  Expected<Value> getitem(size_t pos, const Value& obj, const Value& key) {
    if (obj.is_undefined()) return undefined_error(pos, obj);
    if (obj.kind == Kind::map && key.kind == Kind::string) {
      if (const Value* v = obj.find(key.s)) return *v;
      return Value::undefined("'dict object' has no attribute '" + key.s + "'");
    }
    if ((obj.kind == Kind::list || obj.kind == Kind::string) && is_number(key)) {
      std::vector<size_t> cps;
      int64_t n = 0;
      if (obj.kind == Kind::list) {
        n = static_cast<int64_t>(obj.list->size());
      } else {
        cps = code_points(obj.s);
        n = static_cast<int64_t>(cps.size()) - 1;
      }
      int64_t k = as_int(key);
      if (k < 0) k += n;
      if (k < 0 || k >= n)
        return Value::undefined(std::string("'") + type_name(obj) + " object' has no element " + to_str(key));
      if (obj.kind == Kind::list) return (*obj.list)[k];
      return Value::string(obj.s.substr(cps[k], cps[k + 1] - cps[k]));
    }
    return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute " + repr(key));
  }

  Expected<Value> eval_slice(const Expr& e) {
    JINJA_TRY(obj, eval(*e.args[0]));
    Value parts[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.args[k + 1]) continue;
      JINJA_TRY(v, eval(*e.args[k + 1]));
      if (!is_number(v) && v.kind != Kind::none) return fail(e.pos, "slice indices must be integers or None");
      parts[k] = v;
    }
    if (obj.is_undefined()) return undefined_error(e.pos, obj);
    int64_t step = parts[2].kind == Kind::undefined || parts[2].kind == Kind::none ? 1 : as_int(parts[2]);
    if (step == 0) return fail(e.pos, "slice step cannot be zero");
    if (obj.kind != Kind::list && obj.kind != Kind::string) return Value::undefined("unsliceable value");
    std::vector<size_t> cps;
    if (obj.kind == Kind::string) cps = code_points(obj.s);
    int64_t n = obj.kind == Kind::list ? static_cast<int64_t>(obj.list->size()) : static_cast<int64_t>(cps.size()) - 1;
    int64_t lo = 0, hi = 0;
    slice_indices(n, parts[0], parts[1], step, lo, hi);
    List items;
    std::string text;
    for (int64_t k = lo; step > 0 ? k < hi : k > hi; k += step) {
      if (obj.kind == Kind::list)
        items.push_back((*obj.list)[k]);
      else
        text.append(obj.s, cps[k], cps[k + 1] - cps[k]);
    }
    if (obj.kind == Kind::list) return Value::make_list(std::move(items));
    return Value::string(std::move(text));
  }

  Expected<Value> binary(size_t pos, const std::string& op, const Value& a, const Value& b) {
    if (op == "~") return Value::string(to_str(a) + to_str(b));
    if (a.is_undefined()) return undefined_error(pos, a);
    if (b.is_undefined()) return undefined_error(pos, b);
    auto type_error = [&] {
      return fail(pos, "unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
    };
    if (is_number(a) && is_number(b)) {
      // Python's ints do not overflow; ours are 64-bit, so overflow is an error rather than a wrong number.
      int64_t x = as_int(a), y = as_int(b), r = 0;
      auto overflow = [&] { return fail(pos, "integer overflow in " + op); };
      if (op == "+") return __builtin_add_overflow(x, y, &r) ? overflow() : Expected<Value>(Value::integer(r));
      if (op == "-") return __builtin_sub_overflow(x, y, &r) ? overflow() : Expected<Value>(Value::integer(r));
      if (op == "*") return __builtin_mul_overflow(x, y, &r) ? overflow() : Expected<Value>(Value::integer(r));
      if (op == "//" || op == "%") {
        if (y == 0) return fail(pos, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) return overflow();
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors
          --q;
          m += y;
        }
        return Value::integer(op == "//" ? q : m);
      }
      if (op == "**") {
        if (y < 0) return fail(pos, "unsupported construct: negative exponent (gives a float)");
        int64_t p = 1, base = x;
        for (; y > 0; y >>= 1) {  // by squaring
          if ((y & 1) && __builtin_mul_overflow(p, base, &p)) return overflow();
          if (y > 1 && __builtin_mul_overflow(base, base, &base)) return overflow();
        }
        return Value::integer(p);
      }
    }
    if (op == "+" && a.kind == Kind::string && b.kind == Kind::string) return Value::string(a.s + b.s);
    if (op == "+" && a.kind == Kind::list && b.kind == Kind::list) {
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(items));
    }
    if (op == "*" && (is_number(a) != is_number(b))) {
      const Value& seq = is_number(a) ? b : a;
      int64_t times = as_int(is_number(a) ? a : b);
      size_t n = seq.kind == Kind::string ? seq.s.size() : seq.kind == Kind::list ? seq.list->size() : 0;
      if (times > 0 && n > 0 && static_cast<uint64_t>(times) > kMaxOutput / n) return fail(pos, "result is too large");
      if (seq.kind == Kind::string) {
        std::string s;
        for (int64_t k = 0; k < times; ++k) s += seq.s;
        return Value::string(std::move(s));
      }
      if (seq.kind == Kind::list) {
        List items;
        for (int64_t k = 0; k < times; ++k) items.insert(items.end(), seq.list->begin(), seq.list->end());
        return Value::make_list(std::move(items));
      }
    }
    if (op == "%" && a.kind == Kind::string) return fail(pos, "unsupported construct: '%' string formatting");
    return type_error();
  }

  Expected<bool> less(size_t pos, const char* op, const Value& a, const Value& b) {
    if (a.is_undefined()) return undefined_error(pos, a);
    if (b.is_undefined()) return undefined_error(pos, b);
    if (is_number(a) && is_number(b)) return as_int(a) < as_int(b);
    if (a.kind == Kind::string && b.kind == Kind::string) return a.s < b.s;  // UTF-8 byte order is code point order
    if (a.kind == Kind::list && b.kind == Kind::list) {
      for (size_t k = 0; k < a.list->size() && k < b.list->size(); ++k) {
        if (equals((*a.list)[k], (*b.list)[k])) continue;
        return less(pos, op, (*a.list)[k], (*b.list)[k]);
      }
      return a.list->size() < b.list->size();
    }
    return fail(pos, std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" +
                         type_name(b) + "'");
  }

  Expected<bool> contains(size_t pos, const Value& item, const Value& container) {
    switch (container.kind) {
      case Kind::undefined:
        return false;
      case Kind::string:
        if (item.kind != Kind::string) {
          return fail(pos, std::string("'in <string>' requires string as left operand, not ") + type_name(item));
        }
        return container.s.find(item.s) != std::string::npos;
      case Kind::list:
        for (const Value& x : *container.list) {
          if (equals(item, x)) return true;
        }
        return false;
      case Kind::map:
        return item.kind == Kind::string && !container.is_namespace && container.find(item.s) != nullptr;
      default:
        return fail(pos, std::string("argument of type '") + type_name(container) + "' is not iterable");
    }
  }

  Expected<bool> compare(size_t pos, const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "<") return less(pos, "<", a, b);
    if (op == ">") return less(pos, ">", b, a);
    if (op == "<=") {
      JINJA_TRY(r, less(pos, "<=", b, a));
      return !r;
    }
    if (op == ">=") {
      JINJA_TRY(r, less(pos, ">=", a, b));
      return !r;
    }
    if (op == "in") return contains(pos, a, b);
    JINJA_TRY(r, contains(pos, a, b));  // not in
    return !r;
  }

  // Positional and keyword arguments of a filter, test or call, evaluated; args[0] is the callee or subject.
  struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
    const Value* get(size_t index, const char* name) const {
      if (index < pos.size()) return &pos[index];
      for (const auto& [k, v] : kw) {
        if (k == name) return &v;
      }
      return nullptr;
    }
  };

  Expected<Args> eval_args(const Expr& e) {
    Args args;
    for (size_t k = 1; k < e.args.size(); ++k) {
      JINJA_TRY(v, eval(*e.args[k]));
      args.pos.push_back(v);
    }
    for (const auto& [k, a] : e.kwargs) {
      JINJA_TRY(v, eval(*a));
      args.kw.emplace_back(k, v);
    }
    return args;
  }

  Expected<Value> length(size_t pos, const Value& v) {
    switch (v.kind) {
      case Kind::undefined:
        return Value::integer(0);
      case Kind::string:
        return Value::integer(static_cast<int64_t>(code_points(v.s).size()) - 1);
      case Kind::list:
        return Value::integer(static_cast<int64_t>(v.list->size()));
      case Kind::map:
        if (!v.is_namespace) return Value::integer(static_cast<int64_t>(v.map->size()));
        break;
      default:
        break;
    }
    return fail(pos, std::string("object of type '") + type_name(v) + "' has no len()");
  }

  Expected<Value> eval_filter(const Expr& e) {
    JINJA_TRY(v, eval(*e.args[0]));
    JINJA_TRY(args, eval_args(e));
    const std::string& f = e.name;
    auto str_arg = [&](size_t k, const char* name, const char* dflt) {
      const Value* a = args.get(k, name);
      return a ? to_str(*a) : std::string(dflt);
    };
    if (f == "default" || f == "d") {
      const Value* boolean = args.get(1, "boolean");
      bool use_default = v.is_undefined() || (boolean && truthy(*boolean) && !truthy(v));
      if (!use_default) return v;
      const Value* dflt = args.get(0, "default_value");
      return dflt ? *dflt : Value::string("");
    }
    if (f == "length" || f == "count") return length(e.pos, v);
    if (f == "trim") {
      const Value* chars = args.get(0, "chars");
      std::string set = chars && chars->kind != Kind::none ? to_str(*chars) : "";
      return Value::string(py_strip(to_str(v), true, true, chars && chars->kind != Kind::none ? &set : nullptr));
    }
    if (f == "upper" || f == "lower") return Value::string(change_case(to_str(v), f == "upper"));
    if (f == "string") return Value::string(to_str(v));
    if (f == "capitalize") {
      std::string s = to_str(v);
      size_t first = s.empty() ? 0 : code_points(s)[1];
      return Value::string(change_case(s.substr(0, first), true) + change_case(s.substr(first), false));
    }
    if (f == "replace") {
      std::string s = to_str(v), from = str_arg(0, "old", ""), to = str_arg(1, "new", "");
      return Value::string(replace_all(s, from, to));
    }
    if (f == "int") {
      if (is_number(v)) return Value::integer(as_int(v));
      std::string s = py_strip(to_str(v), true, true);
      try {
        size_t used = 0;
        int64_t x = std::stoll(s, &used);
        if (used == s.size()) return Value::integer(x);
      } catch (...) {
      }
      const Value* dflt = args.get(0, "default");
      return dflt ? *dflt : Value::integer(0);
    }
    if (f == "abs") {
      if (!is_number(v)) return fail(e.pos, std::string("bad operand type for abs(): '") + type_name(v) + "'");
      return Value::integer(std::abs(as_int(v)));
    }
    // The rest work on sequences.
    JINJA_TRY(items_value, iterate(e.pos, v));
    const List& items = *items_value.list;
    if (f == "list") return items_value;
    if (f == "first") return items.empty() ? Value::undefined("no first item") : items.front();
    if (f == "last") return items.empty() ? Value::undefined("no last item") : items.back();
    if (f == "reverse") {
      if (v.kind == Kind::string) {
        std::string s;
        for (auto it = items.rbegin(); it != items.rend(); ++it) s += it->s;
        return Value::string(std::move(s));
      }
      return Value::make_list(List(items.rbegin(), items.rend()));
    }
    if (f == "join") {
      std::string sep = str_arg(0, "d", ""), s;
      for (size_t k = 0; k < items.size(); ++k) s += (k ? sep : "") + to_str(items[k]);
      return Value::string(std::move(s));
    }
    return fail(e.pos, "no filter named '" + f + "'");
  }

  Expected<bool> eval_test(const Expr& e) {
    JINJA_TRY(v, eval(*e.args[0]));
    JINJA_TRY(args, eval_args(e));
    const std::string& t = e.name;
    if (t == "defined") return !v.is_undefined();
    if (t == "undefined") return v.is_undefined();
    if (t == "none") return v.kind == Kind::none;
    if (t == "string") return v.kind == Kind::string;
    if (t == "number") return is_number(v);
    if (t == "integer") return v.kind == Kind::integer;
    if (t == "boolean") return v.kind == Kind::boolean;
    if (t == "true") return v.kind == Kind::boolean && v.b;
    if (t == "false") return v.kind == Kind::boolean && !v.b;
    if (t == "mapping") return v.kind == Kind::map && !v.is_namespace;
    if (t == "sequence")
      return v.kind == Kind::string || v.kind == Kind::list || (v.kind == Kind::map && !v.is_namespace);
    if (t == "iterable")
      return v.kind == Kind::string || v.kind == Kind::list || v.kind == Kind::undefined ||
             (v.kind == Kind::map && !v.is_namespace);
    if (t == "odd" || t == "even" || t == "divisibleby") {
      if (!is_number(v)) return fail(e.pos, std::string("test '") + t + "' needs an integer");
      int64_t x = as_int(v);
      if (t == "odd") return x % 2 != 0;
      if (t == "even") return x % 2 == 0;
      const Value* d = args.get(0, "num");
      if (!d || !is_number(*d) || as_int(*d) == 0) return fail(e.pos, "divisibleby needs a non-zero integer");
      return x % as_int(*d) == 0;
    }
    const Value* other = args.get(0, "other");
    if (!other) return fail(e.pos, "test '" + t + "' needs an argument");
    if (t == "eq" || t == "equalto") return equals(v, *other);
    if (t == "ne") return !equals(v, *other);
    if (t == "in") return contains(e.pos, v, *other);
    static const std::pair<const char*, const char*> ordering[] = {
        {"lt", "<"}, {"gt", ">"}, {"le", "<="}, {"ge", ">="}};
    for (const auto& [name, op] : ordering) {
      if (t == name) return compare(e.pos, op, v, *other);
    }
    return fail(e.pos, "no test named '" + t + "'");
  }

  Expected<Value> eval_call(const Expr& e) {
    const Expr& callee = *e.args[0];
    JINJA_TRY(args, eval_args(e));
    if (callee.kind == Expr::Kind::name) {
      Value bound = lookup(callee.name);
      if (!bound.is_undefined()) return fail(e.pos, std::string("'") + type_name(bound) + "' object is not callable");
      return call_global(e.pos, callee.name, args);
    }
    if (callee.kind == Expr::Kind::getattr) {
      JINJA_TRY(obj, eval(*callee.args[0]));
      if (obj.is_undefined()) return undefined_error(e.pos, obj);
      return call_method(e.pos, obj, callee.name, args);
    }
    return fail(e.pos, "unsupported construct: call of a computed value");
  }

  Expected<Value> call_global(size_t pos, const std::string& name, const Args& args) {
    if (name == "raise_exception") {
      const Value* message = args.get(0, "message");
      return Error{ErrorKind::invalid_argument, message ? to_str(*message) : std::string()};
    }
    if (name == "range") {
      for (const Value& a : args.pos) {
        if (!is_number(a)) return fail(pos, "range() arguments must be integers");
      }
      if (args.pos.empty() || args.pos.size() > 3) return fail(pos, "range() takes 1 to 3 arguments");
      int64_t start = args.pos.size() > 1 ? as_int(args.pos[0]) : 0;
      int64_t stop = as_int(args.pos.size() > 1 ? args.pos[1] : args.pos[0]);
      int64_t step = args.pos.size() > 2 ? as_int(args.pos[2]) : 1;
      if (step == 0) return fail(pos, "range() arg 3 must not be zero");
      List items;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        if (items.size() >= 100000) return fail(pos, "range too big");  // jinja2's sandbox MAX_RANGE
        if (++n_iterations_ > kMaxIterations) return fail(pos, "too many loop iterations");  // counts as work
        items.push_back(Value::integer(k));
      }
      return Value::make_list(std::move(items));
    }
    if (name == "namespace") {
      if (!args.pos.empty()) return fail(pos, "unsupported construct: namespace() with positional arguments");
      Value ns = Value::make_map(Map(args.kw.begin(), args.kw.end()));
      ns.is_namespace = true;
      return ns;
    }
    return fail(pos, "'" + name + "' is undefined");
  }

  Expected<Value> call_method(size_t pos, const Value& obj, const std::string& name, const Args& args) {
    auto str_at = [&](size_t k, const char* kw) -> const Value* {
      const Value* a = args.get(k, kw);
      return a && a->kind == Kind::string ? a : nullptr;
    };
    if (obj.kind == Kind::string) {
      const std::string& s = obj.s;
      if (name == "strip" || name == "lstrip" || name == "rstrip") {
        const Value* chars = str_at(0, "chars");
        return Value::string(py_strip(s, name != "rstrip", name != "lstrip", chars ? &chars->s : nullptr));
      }
      if (name == "upper" || name == "lower") return Value::string(change_case(s, name == "upper"));
      if (name == "startswith" || name == "endswith") {
        const Value* affix = str_at(0, name == "startswith" ? "prefix" : "suffix");
        if (!affix) return fail(pos, name + "() needs a string argument");
        const std::string& a = affix->s;
        bool ok = a.size() <= s.size() && (name == "startswith" ? s.compare(0, a.size(), a) == 0
                                                                : s.compare(s.size() - a.size(), a.size(), a) == 0);
        return Value::boolean(ok);
      }
      if (name == "replace") {
        const Value* from = str_at(0, "old");
        const Value* to = str_at(1, "new");
        if (!from || !to) return fail(pos, "replace() needs two string arguments");
        const Value* count = args.get(2, "count");
        return Value::string(replace_all(s, from->s, to->s, count && is_number(*count) ? as_int(*count) : -1));
      }
      if (name == "split") {
        const Value* sep = args.get(0, "sep");
        List parts;
        if (!sep || sep->kind == Kind::none) {  // runs of whitespace, no empty parts
          auto cps = code_points(s);
          std::string word;
          for (size_t k = 0; k + 1 < cps.size(); ++k) {
            if (py_space(decode_at(s, cps[k]))) {
              if (!word.empty()) parts.push_back(Value::string(std::move(word)));
              word.clear();
            } else {
              word.append(s, cps[k], cps[k + 1] - cps[k]);
            }
          }
          if (!word.empty()) parts.push_back(Value::string(std::move(word)));
        } else {
          if (sep->kind != Kind::string || sep->s.empty()) return fail(pos, "split() needs a non-empty separator");
          size_t k = 0;
          for (size_t hit; (hit = s.find(sep->s, k)) != std::string::npos; k = hit + sep->s.size()) {
            parts.push_back(Value::string(s.substr(k, hit - k)));
          }
          parts.push_back(Value::string(s.substr(k)));
        }
        return Value::make_list(std::move(parts));
      }
    }
    if (obj.kind == Kind::map && !obj.is_namespace) {
      if (name == "get") {
        const Value* key = args.get(0, "key");
        const Value* dflt = args.get(1, "default");
        const Value* hit = key && key->kind == Kind::string ? obj.find(key->s) : nullptr;
        return hit ? *hit : dflt ? *dflt : Value::none();
      }
      if (name == "items" || name == "keys" || name == "values") {
        List items;
        for (const auto& [k, v] : *obj.map) {
          if (name == "items")
            items.push_back(Value::make_list({Value::string(k), v}));
          else
            items.push_back(name == "keys" ? Value::string(k) : v);
        }
        return Value::make_list(std::move(items));
      }
    }
    return fail(pos, std::string("'") + type_name(obj) + " object' has no method '" + name + "'");
  }

  const Program& program_;
  std::vector<Map> scopes_;  // [0]: the caller's variables; then one per loop iteration
  std::string out_;
  int64_t n_iterations_ = 0;
};

#undef JINJA_TRY

}  // namespace

Expected<std::string> render(const Program& program, const Map& variables) {
  return Evaluator(program, variables).run();
}

}  // namespace troupe::jinja
