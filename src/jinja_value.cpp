// jinja_value.cpp: Python's semantics for jinja::Value (see jinja.hpp): str(), repr(), truthiness, ==, and the
// string helpers the filters and methods share (lengths and indices count code points, as Python's str does).
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>

#include "jinja.hpp"

namespace troupe::jinja {

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::map) return nullptr;
  for (const auto& [k, v] : *map) {
    if (k == key) return &v;
  }
  return nullptr;
}

Value* Value::find(std::string_view key) { return const_cast<Value*>(static_cast<const Value&>(*this).find(key)); }

using Kind = Value::Kind;

// Byte offsets of the code points of a UTF-8 string, plus one past the end.
std::vector<size_t> code_points(const std::string& s) {
  std::vector<size_t> offsets;
  for (size_t k = 0; k < s.size(); ++k) {
    if ((static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) offsets.push_back(k);
  }
  offsets.push_back(s.size());
  return offsets;
}

uint32_t decode_at(const std::string& s, size_t k) {
  auto b = [&](size_t j) { return j < s.size() ? static_cast<unsigned char>(s[j]) : 0u; };
  uint32_t c = b(k);
  if (c < 0x80) return c;
  if ((c & 0xE0) == 0xC0) return ((c & 0x1F) << 6) | (b(k + 1) & 0x3F);
  if ((c & 0xF0) == 0xE0) return ((c & 0x0F) << 12) | ((b(k + 1) & 0x3F) << 6) | (b(k + 2) & 0x3F);
  return ((c & 0x07) << 18) | ((b(k + 1) & 0x3F) << 12) | ((b(k + 2) & 0x3F) << 6) | (b(k + 3) & 0x3F);
}

// Python's str.isspace() for one code point.
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's str.strip/lstrip/rstrip: chars empty means whitespace.
std::string py_strip(const std::string& s, bool left, bool right, const std::string* chars) {
  std::vector<uint32_t> set;
  if (chars) {
    auto cps = code_points(*chars);
    for (size_t k = 0; k + 1 < cps.size(); ++k) set.push_back(decode_at(*chars, cps[k]));
  }
  auto strip_it = [&](uint32_t c) { return chars ? std::find(set.begin(), set.end(), c) != set.end() : py_space(c); };
  auto cps = code_points(s);
  size_t n = cps.size() - 1, first = 0, last = n;
  if (left) {
    while (first < n && strip_it(decode_at(s, cps[first]))) ++first;
  }
  if (right) {
    while (last > first && strip_it(decode_at(s, cps[last - 1]))) --last;
  }
  return s.substr(cps[first], cps[last] - cps[first]);
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// In a block [lo, hi] of upper/lower pairs, the upper case letter sits at an even (upper_even) or odd code point.
bool in_pairs(uint32_t c, uint32_t lo, uint32_t hi) { return c >= lo && c <= hi; }

uint32_t to_upper(uint32_t c) {
  auto pair_upper = [c](bool upper_even) { return ((c & 1) == 0) == upper_even ? c : c - 1; };
  if (c < 0x80) return c >= 'a' && c <= 'z' ? c - 32 : c;
  if (c == 0xB5) return 0x39C;
  if (c >= 0xE0 && c <= 0xFE && c != 0xF7) return c - 32;
  if (c == 0xFF) return 0x178;
  if (c == 0x131) return 'I';
  if (c == 0x17F) return 'S';
  if (in_pairs(c, 0x100, 0x12F) || in_pairs(c, 0x132, 0x137) || in_pairs(c, 0x14A, 0x177)) return pair_upper(true);
  if (in_pairs(c, 0x139, 0x148) || in_pairs(c, 0x179, 0x17E)) return pair_upper(false);
  if (c == 0x3C2) return 0x3A3;
  if ((c >= 0x3B1 && c <= 0x3CB)) return c - 0x20;
  if (c == 0x3AC) return 0x386;
  if (c >= 0x3AD && c <= 0x3AF) return c - 0x25;
  if (c == 0x3CC) return 0x38C;
  if (c == 0x3CD || c == 0x3CE) return c - 0x3F;
  if (c >= 0x430 && c <= 0x44F) return c - 0x20;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  if (c == 0x4CF) return 0x4C0;
  if (in_pairs(c, 0x460, 0x481) || in_pairs(c, 0x48A, 0x4BF) || in_pairs(c, 0x4D0, 0x52F)) return pair_upper(true);
  if (in_pairs(c, 0x4C1, 0x4CE)) return pair_upper(false);
  return c;
}

uint32_t to_lower(uint32_t c) {
  auto pair_lower = [c](bool upper_even) { return ((c & 1) == 0) == upper_even ? c + 1 : c; };
  if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
  if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (in_pairs(c, 0x100, 0x12F) || in_pairs(c, 0x132, 0x137) || in_pairs(c, 0x14A, 0x177)) return pair_lower(true);
  if (in_pairs(c, 0x139, 0x148) || in_pairs(c, 0x179, 0x17E)) return pair_lower(false);
  if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 0x20;
  if (c == 0x386) return 0x3AC;
  if (c >= 0x388 && c <= 0x38A) return c + 0x25;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 0x3F;
  if (c >= 0x410 && c <= 0x42F) return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  if (c == 0x4C0) return 0x4CF;
  if (in_pairs(c, 0x460, 0x481) || in_pairs(c, 0x48A, 0x4BF) || in_pairs(c, 0x4D0, 0x52F)) return pair_lower(true);
  if (in_pairs(c, 0x4C1, 0x4CE)) return pair_lower(false);
  return c;
}

}  // namespace

std::string change_case(const std::string& s, bool upper) {
  std::string out;
  out.reserve(s.size());
  auto cps = code_points(s);
  for (size_t k = 0; k + 1 < cps.size(); ++k) {
    uint32_t c = decode_at(s, cps[k]);
    if (upper && c == 0xDF) {
      out += "SS";  // 'ß'.upper()
    } else if (upper && c == 0x149) {
      out += "\xCA\xBCN";  // 'ŉ'.upper() is U+02BC 'ʼ' + 'N'
    } else if (!upper && c == 0x130) {
      out += "i\xCC\x87";  // 'İ'.lower() is 'i' + U+0307
    } else {
      uint32_t m = upper ? to_upper(c) : to_lower(c);
      if (m == c)
        out.append(s, cps[k], cps[k + 1] - cps[k]);  // unchanged bytes, even if not valid UTF-8
      else
        append_utf8(out, m);
    }
  }
  return out;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) return s;  // Python inserts `to` between characters; not needed by chat templates
  std::string out;
  size_t k = 0;
  for (size_t hit; count != 0 && (hit = s.find(from, k)) != std::string::npos; --count) {
    out.append(s, k, hit - k);
    out += to;
    k = hit + from.size();
  }
  out.append(s, k, std::string::npos);
  return out;
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
      return "Undefined";
    case Kind::none:
      return "NoneType";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::string:
      return "str";
    case Kind::list:
      return "list";
    case Kind::map:
      return v.is_namespace ? "Namespace" : "dict";
  }
  return "?";
}

bool is_number(const Value& v) { return v.kind == Kind::integer || v.kind == Kind::boolean; }
int64_t as_int(const Value& v) { return v.kind == Kind::boolean ? (v.b ? 1 : 0) : v.i; }

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
    case Kind::none:
      return false;
    case Kind::boolean:
      return v.b;
    case Kind::integer:
      return v.i != 0;
    case Kind::string:
      return !v.s.empty();
    case Kind::list:
      return !v.list->empty();
    case Kind::map:
      return v.is_namespace || !v.map->empty();
  }
  return false;
}

bool equals(const Value& a, const Value& b) {
  if (is_number(a) && is_number(b)) return as_int(a) == as_int(b);
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::undefined:
    case Kind::none:
      return true;
    case Kind::string:
      return a.s == b.s;
    case Kind::list:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k) {
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      }
      return true;
    case Kind::map:
      if (a.map == b.map) return true;
      if (a.is_namespace || b.is_namespace || a.map->size() != b.map->size()) return false;
      for (const auto& [k, v] : *a.map) {
        const Value* other = b.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    default:
      return false;
  }
}

namespace {

// Python's repr of a str: single quotes unless the text has ' and no ".
std::string repr_string(const std::string& s) {
  char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  auto cps = code_points(s);
  char buf[16];
  for (size_t k = 0; k + 1 < cps.size(); ++k) {
    uint32_t c = decode_at(s, cps[k]);
    if (c == '\\')
      out += "\\\\";
    else if (c == static_cast<uint32_t>(quote)) {
      out += '\\';
      out += quote;
    } else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) ||
               (c >= 0x205F && c <= 0x2064) || c == 0x3000 || c == 0xFEFF) {
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out.append(s, cps[k], cps[k + 1] - cps[k]);
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string repr(const Value& v) {
  switch (v.kind) {
    case Kind::string:
      return repr_string(v.s);
    case Kind::list: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k]);
      return out + "]";
    }
    case Kind::map: {
      std::string out = v.is_namespace ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, x] : *v.map) {
        out += (first ? "" : ", ") + repr_string(k) + ": " + repr(x);
        first = false;
      }
      return out + (v.is_namespace ? "}>" : "}");
    }
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::undefined:
      return "";
    case Kind::none:
      return "None";
    case Kind::boolean:
      return v.b ? "True" : "False";
    case Kind::integer:
      return std::to_string(v.i);
    case Kind::string:
      return v.s;
    default:
      return repr(v);
  }
}

}  // namespace troupe::jinja
