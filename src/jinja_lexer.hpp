// jinja_lexer.hpp: the lexer of the Jinja subset (internal to jinja_parse.cpp). It follows jinja2's lexer.py rule by
// rule, because that is where the whitespace behaviour lives:
//   - {%- {{- {#- strip all whitespace before the tag; -%} -}} -#} strip all whitespace after it;
//   - trim_blocks: one \n directly after %} or #} is dropped (not after }}; +%} keeps it);
//   - lstrip_blocks: spaces and tabs between the start of a line and {% or {# are dropped (not before {{; {%+ keeps
//     them). "Start of a line" includes the position right after a tag whose match ended with \n.
// Inside {{ }} and {% %} it gives names, strings (unescaped like Python's "unicode-escape"), integers and operators.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

namespace troupe::jinja {

enum class Tok { data, var_begin, var_end, block_begin, block_end, name, string, integer, op, eof };

struct Token {
  Tok type = Tok::eof;
  std::string text;   // data, name, operator, or the unescaped string
  int64_t value = 0;  // integer
  size_t pos = 0;
};

// The tokens of a newline-normalised template, ending with Tok::eof; the Error (invalid_model) names the line and
// column of the first problem.
Expected<std::vector<Token>> lex(const std::string& source);

}  // namespace troupe::jinja
