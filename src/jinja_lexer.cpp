// jinja_lexer.cpp: the lexer of the Jinja subset (see jinja_lexer.hpp for the whitespace rules it implements).
#include "jinja_lexer.hpp"

#include <cctype>
#include <string>
#include <string_view>

#include "jinja.hpp"

namespace troupe::jinja {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {}

  // Tokens, or the first error.
  bool run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      if (tag == std::string::npos) {
        push(Tok::data, src_.substr(pos_), pos_);
        pos_ = src_.size();
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      if (sign != '-' && sign != '+') sign = 0;
      std::string text = src_.substr(pos_, tag - pos_);
      if (sign == '-') {
        size_t end = text.size();
        while (end > 0 && is_space(text[end - 1])) --end;
        text.resize(end);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size()) {
          bool blank = true;
          for (size_t k = l_pos; k < text.size(); ++k) blank = blank && is_space(text[k]);
          if (blank) text.resize(l_pos);
        }
      }
      if (!text.empty()) push(Tok::data, text, pos_);
      pos_ = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        if (!comment(tag)) return false;
        line_starting = src_[pos_ - 1] == '\n';
        continue;
      }
      push(kind == '{' ? Tok::var_begin : Tok::block_begin, "", tag);
      if (!inside_tag(kind, tag)) return false;
      line_starting = src_[pos_ - 1] == '\n';
    }
    push(Tok::eof, "", src_.size());
    return true;
  }

  std::vector<Token> tokens;
  std::string error;
  size_t error_pos = 0;

 private:
  void push(Tok type, std::string text, size_t pos, int64_t value = 0) {
    tokens.push_back(Token{type, std::move(text), value, pos});
  }
  bool fail(size_t pos, std::string message) {
    error = std::move(message);
    error_pos = pos;
    return false;
  }
  bool starts(size_t pos, std::string_view s) const { return src_.compare(pos, s.size(), s) == 0; }

  size_t find_tag(size_t from) const {
    for (size_t p = src_.find('{', from); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    }
    return std::string::npos;
  }

  // After an end marker: "-X}" eats all following whitespace, "+X}" nothing, "X}" one \n if trim (blocks only).
  void after_end(char sign, bool trim) {
    if (sign == '-') {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
    } else if (sign == 0 && trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
  }

  bool comment(size_t tag) {
    size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) return fail(tag, "missing end of comment tag");
    char sign = 0;
    if (end > pos_ && (src_[end - 1] == '-' || src_[end - 1] == '+')) sign = src_[end - 1];
    pos_ = end + 2;
    after_end(sign, true);
    return true;
  }

  // Expression tokens up to and including the end marker of a {{ or {% tag.
  bool inside_tag(char kind, size_t tag) {
    const char* close = kind == '{' ? "}}" : "%}";
    std::vector<char> balance;
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) return fail(tag, "unexpected end of template: tag is not closed");
      size_t start = pos_;
      if (balance.empty()) {
        char sign = 0;
        if ((src_[pos_] == '-' || (src_[pos_] == '+' && kind == '%')) && starts(pos_ + 1, close)) sign = src_[pos_];
        if (sign || starts(pos_, close)) {
          pos_ += 2 + (sign ? 1 : 0);
          after_end(sign, kind == '%');
          push(kind == '{' ? Tok::var_end : Tok::block_end, "", start);
          return true;
        }
      }
      char c = src_[pos_];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_'))
          ++pos_;
        push(Tok::name, src_.substr(start, pos_ - start), start);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        if (!number(start)) return false;
      } else if (c == '\'' || c == '"') {
        if (!string(start)) return false;
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
                                    "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
        std::string op;
        for (const char* o : ops) {
          if (starts(pos_, o)) {
            op = o;
            break;
          }
        }
        if (op.empty()) return fail(start, std::string("unexpected character '") + c + "'");
        if (op == "(" || op == "[" || op == "{") balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        if (op == ")" || op == "]" || op == "}") {
          if (balance.empty()) return fail(start, "unexpected '" + op + "'");
          if (balance.back() != op[0]) {
            return fail(start, "unexpected '" + op + "', expected '" + std::string(1, balance.back()) + "'");
          }
          balance.pop_back();
        }
        pos_ += op.size();
        push(Tok::op, op, start);
      }
    }
  }

  bool number(size_t start) {
    int64_t value = 0;
    while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) {
      if (src_[pos_] != '_') {
        int digit = src_[pos_] - '0';
        if (value > (INT64_MAX - digit) / 10) return fail(start, "unsupported construct: integer beyond 64 bits");
        value = value * 10 + digit;
      }
      ++pos_;
    }
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      return fail(start, "unsupported construct: float literal");
    }
    if (pos_ < src_.size() &&
        (src_[pos_] == 'e' || src_[pos_] == 'E' || src_[pos_] == 'x' || src_[pos_] == 'o' || src_[pos_] == 'b')) {
      return fail(start, "unsupported construct: number literal");
    }
    push(Tok::integer, src_.substr(start, pos_ - start), start, value);
    return true;
  }

  // A quoted string, unescaped the way jinja2 does it (Python's "unicode-escape" codec).
  bool string(size_t start) {
    char quote = src_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) return fail(start, "unterminated string literal");
      char c = src_[pos_++];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) return fail(start, "unterminated string literal");
      char e = src_[pos_++];
      auto hex = [&](int n) -> bool {
        if (pos_ + n > src_.size()) return false;
        uint32_t cp = 0;
        for (int k = 0; k < n; ++k) {
          char h = src_[pos_ + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) return false;
          cp = cp * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        if (cp > 0x10FFFF) return false;
        pos_ += n;
        append_utf8(out, cp);
        return true;
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          if (!hex(2)) return fail(start, "bad \\x escape in string literal");
          break;
        case 'u':
          if (!hex(4)) return fail(start, "bad \\u escape in string literal");
          break;
        case 'U':
          if (!hex(8)) return fail(start, "bad \\U escape in string literal");
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = e - '0';
            for (int k = 0; k < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++k) {
              cp = cp * 8 + (src_[pos_++] - '0');
            }
            append_utf8(out, cp);
          } else {
            out += '\\';  // unknown escapes are kept as written
            out += e;
          }
      }
    }
    push(Tok::string, out, start);
    return true;
  }

  const std::string& src_;
  size_t pos_ = 0;
};

}  // namespace

Expected<std::vector<Token>> lex(const std::string& source) {
  Lexer lexer(source);
  if (!lexer.run()) return syntax_error(source, lexer.error_pos, lexer.error);
  return std::move(lexer.tokens);
}

}  // namespace troupe::jinja
