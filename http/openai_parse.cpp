// openai_parse.cpp: request bodies into validated plain structs (see openai.hpp). In the order it runs:
//   parse_json      strict JSON through a SAX handler that stops at depth > 64 and at non-finite numbers
//   Reader          typed, range-checked field access; the first problem becomes the ApiError, naming its field
//   parse_*_request one per endpoint
#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>

#include "openai.hpp"

namespace troupe::http {

namespace {

using json = nlohmann::json;

// ---- strict JSON ----

// Builds the DOM like nlohmann's own SAX DOM builder, but stops the parse (returns false) at a container nested
// deeper than kMaxJsonDepth, so "[[[[..." of any length costs no more than 64 levels. nlohmann itself rejects
// NaN/Infinity literals, invalid UTF-8 in strings and keys, lone surrogate escapes, control characters in strings
// and trailing text. A number too large for a double (1e400) is valid JSON but stops nlohmann's parser: the handler
// notes where it is, so that parse_object can put a finite stand-in there and the field's own check refuses it.
class LimitedSax {
 public:
  explicit LimitedSax(json& root) : dom_(root, /*allow_exceptions=*/false) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const std::string& s) { return dom_.number_float(v, s); }
  bool string(std::string& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) { return deeper() && dom_.start_object(n); }
  bool key(std::string& v) { return dom_.key(v); }
  bool end_object() { --depth_; return dom_.end_object(); }
  bool start_array(std::size_t n) { return deeper() && dom_.start_array(n); }
  bool end_array() { --depth_; return dom_.end_array(); }
  bool parse_error(std::size_t position, const std::string& token, const nlohmann::detail::exception& e) {
    if (e.id == 406 && token.size() <= position) {  // "number overflow parsing '1e400'": the token ends at position
      overflow_ = {position - token.size(), token.size()};
      return false;
    }
    // nlohmann's message ends with "; last read: '...'", the request's own bytes: not echoed back.
    std::string what = e.what();
    if (auto cut = what.find("; last read"); cut != std::string::npos) what.resize(cut);
    if (auto colon = what.find("] "); colon != std::string::npos) what.erase(0, colon + 2);
    return stop("the body is not valid JSON (at byte " + std::to_string(position) + "): " + what);
  }

  const std::string& problem() const { return problem_; }
  // (offset, length) of a number that overflowed a double, if that is what stopped the parse.
  const std::optional<std::pair<size_t, size_t>>& overflow() const { return overflow_; }

 private:
  bool deeper() {
    if (++depth_ > kMaxJsonDepth) return stop("the body is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    return true;
  }
  bool stop(std::string why) {
    if (problem_.empty()) problem_ = std::move(why);
    return false;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  int depth_ = 0;
  std::string problem_;
  std::optional<std::pair<size_t, size_t>> overflow_;
};

ApiResult<json> parse_object(std::string_view body) {
  constexpr int kMaxOverflows = 16;
  std::string patched;  // the body with overflowing numbers replaced by +-1e308, once there is one
  std::string_view text = body;
  for (int n_overflows = 0;; ++n_overflows) {
    json root;
    LimitedSax sax(root);
    const bool ok = json::sax_parse(text.begin(), text.end(), &sax, json::input_format_t::json, /*strict=*/true);
    if (!ok && sax.overflow() && n_overflows < kMaxOverflows) {
      const auto [at, length] = *sax.overflow();
      if (patched.empty()) patched.assign(body);
      patched.replace(at, length, text[at] == '-' ? "-1e308" : "1e308");
      text = patched;
      continue;
    }
    if (!ok || !sax.problem().empty()) {
      return bad_request(sax.problem().empty() ? "the body is not valid JSON" : sax.problem());
    }
    if (!root.is_object()) return bad_request("the body must be a JSON object");
    return root;
  }
}

// ---- typed fields ----

std::string quoted(const std::string& key) { return "'" + key + "'"; }

// Reads fields of one JSON object; the first problem is kept as the ApiError, naming the field. Absent and null
// fields read as "not given".
class Reader {
 public:
  explicit Reader(const json& object) : object_(object) {}

  const json* get(const std::string& key) const {
    auto it = object_.find(key);
    return it == object_.end() || it->is_null() ? nullptr : &*it;
  }

  bool failed() const { return error_.has_value(); }
  const ApiError& error() const { return *error_; }
  void fail(std::string message, std::string param) {
    if (!error_) error_ = bad_request(std::move(message), std::move(param));
  }

  std::optional<bool> boolean(const std::string& key) {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) return fail(quoted(key) + " must be a boolean", key), std::nullopt;
    return v->get<bool>();
  }

  std::optional<std::string> string(const std::string& key) {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) return fail(quoted(key) + " must be a string", key), std::nullopt;
    return v->get<std::string>();
  }

  // A whole number in [lo, hi]; a fraction, a string or one out of range is refused.
  std::optional<int64_t> integer(const std::string& key, int64_t lo, int64_t hi) {
    const json* v = get(key);
    if (!v) return std::nullopt;
    const std::string range = hi == std::numeric_limits<int64_t>::max()
                                  ? "an integer of at least " + std::to_string(lo)
                                  : "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    if (!v->is_number_integer()) return fail(quoted(key) + " must be " + range, key), std::nullopt;
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return fail(quoted(key) + " must be " + range, key), std::nullopt;
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) return fail(quoted(key) + " must be " + range, key), std::nullopt;
    return x;
  }

  // A number in a range; `range` says which in the message ("from 0 to 2", "in (0, 1]").
  template <class InRange>
  std::optional<double> number(const std::string& key, InRange in_range, const std::string& range) {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) return fail(quoted(key) + " must be a number " + range, key), std::nullopt;
    const double x = v->get<double>();
    // The engine gets a float: a value whose float falls outside the range is refused too (1e-300 is in (0, 1] but
    // its float is 0, and a repetition_penalty of 0 divides by zero).
    if (!in_range(x) || !in_range(static_cast<float>(x))) {
      return fail(quoted(key) + " must be a number " + range, key), std::nullopt;
    }
    return x;
  }

  std::optional<double> closed(const std::string& key, double lo, double hi) {
    return number(key, [=](double x) { return x >= lo && x <= hi; },
                  "from " + trim(lo) + " to " + trim(hi));
  }

 private:
  static std::string trim(double x) {
    std::string s = std::to_string(x);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }

  const json& object_;
  std::optional<ApiError> error_;
};

// ---- fields both endpoints share ----

// A token id below n_vocab (nlohmann keeps non-negative integers unsigned, negative ones signed).
bool token_id(const json& v, int n_vocab, TokenId& out) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() >= static_cast<uint64_t>(n_vocab)) return false;
  } else if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= n_vocab) {
    return false;
  }
  out = static_cast<TokenId>(v.get<int64_t>());
  return true;
}

void read_stop(Reader& r, std::vector<std::string>& stop) {
  const json* v = r.get("stop");
  if (!v) return;
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > kMaxStopStrings) {
      return r.fail("'stop' may hold at most " + std::to_string(kMaxStopStrings) + " strings", "stop");
    }
    for (const json& s : *v) {
      if (!s.is_string()) return r.fail("'stop' must be a string or an array of strings", "stop");
      out.push_back(s.get<std::string>());
    }
  } else {
    return r.fail("'stop' must be a string or an array of strings", "stop");
  }
  for (const auto& s : out) {
    if (s.empty()) return r.fail("'stop' strings must not be empty", "stop");
    if (s.size() > kMaxStopBytes) {
      return r.fail("'stop' strings may be at most " + std::to_string(kMaxStopBytes) + " bytes long", "stop");
    }
  }
  stop = std::move(out);
}

void read_logit_bias(Reader& r, int n_vocab, std::vector<std::pair<TokenId, float>>& out) {
  const json* v = r.get("logit_bias");
  if (!v) return;
  if (!v->is_object()) return r.fail("'logit_bias' must be an object of token id -> bias", "logit_bias");
  for (const auto& [key, bias] : v->items()) {
    const bool digits = !key.empty() && key.size() <= 10 &&
                        key.find_first_not_of("0123456789") == std::string::npos;
    const int64_t id = digits ? std::stoll(key) : -1;
    if (!digits || id >= n_vocab) {
      return r.fail("'logit_bias' keys must be token ids from 0 to " + std::to_string(n_vocab - 1), "logit_bias");
    }
    if (!bias.is_number() || !(bias.get<double>() >= -100 && bias.get<double>() <= 100)) {
      return r.fail("'logit_bias' values must be numbers from -100 to 100", "logit_bias");
    }
    out.emplace_back(static_cast<TokenId>(id), bias.get<float>());
  }
}

// The sampling and length fields of both endpoints.
void read_common(Reader& r, const RequestLimits& limits, CompletionRequest& req) {
  req.model = r.string("model");

  const auto max_tokens = r.integer("max_tokens", 1, std::numeric_limits<int64_t>::max());
  const auto max_completion = r.integer("max_completion_tokens", 1, std::numeric_limits<int64_t>::max());
  if (max_completion) {
    req.max_tokens = max_completion;
    req.max_tokens_param = "max_completion_tokens";
  } else if (max_tokens) {
    req.max_tokens = max_tokens;
  }

  SamplingParams& s = req.params.sampling;
  if (auto t = r.closed("temperature", 0, 2)) s.temperature = static_cast<float>(*t);
  if (auto p = r.number("top_p", [](double x) { return x > 0 && x <= 1; }, "in (0, 1]")) s.top_p = static_cast<float>(*p);
  if (auto k = r.integer("top_k", 0, std::numeric_limits<int64_t>::max())) {
    s.top_k = static_cast<int>(std::min<int64_t>(*k, std::max(limits.n_vocab, 1)));
  }
  if (auto p = r.closed("min_p", 0, 1)) s.min_p = static_cast<float>(*p);
  if (auto p = r.closed("presence_penalty", -2, 2)) s.presence_penalty = static_cast<float>(*p);
  if (auto p = r.closed("frequency_penalty", -2, 2)) s.frequency_penalty = static_cast<float>(*p);
  if (auto p = r.number("repetition_penalty", [](double x) { return x > 0 && x <= 10; }, "in (0, 10]")) {
    s.repetition_penalty = static_cast<float>(*p);
  }
  if (const json* seed = r.get("seed")) {
    if (seed->is_number_unsigned()) req.seed = seed->get<uint64_t>();
    else if (seed->is_number_integer()) req.seed = static_cast<uint64_t>(seed->get<int64_t>());
    else r.fail("'seed' must be an integer", "seed");
  }
  read_stop(r, req.params.stop);
  if (auto n = r.integer("n", 1, limits.max_n)) req.n = static_cast<int>(*n);
  read_logit_bias(r, limits.n_vocab, s.logit_bias);
  if (auto stream = r.boolean("stream")) req.stream = *stream;
  if (const json* so = r.get("stream_options")) {
    if (!so->is_object()) {
      r.fail("'stream_options' must be an object", "stream_options");
    } else if (auto it = so->find("include_usage"); it != so->end() && !it->is_null()) {
      if (!it->is_boolean()) r.fail("'stream_options.include_usage' must be a boolean", "stream_options");
      else req.include_usage = it->get<bool>();
    }
  }
  r.string("user");
}

// ---- chat messages ----

void read_messages(Reader& r, const json& root, std::vector<ChatMessage>& out) {
  auto it = root.find("messages");
  if (it == root.end() || !it->is_array() || it->empty()) {
    return r.fail("'messages' must be a non-empty array of {role, content}", "messages");
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return r.fail(at + " must be an object with 'role' and 'content'", at);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return r.fail(at + ".role must be a string", at + ".role");
    const std::string rs = role->get<std::string>();
    if (rs != "system" && rs != "user" && rs != "assistant") {
      return r.fail(at + ".role must be one of system, user, assistant", at + ".role");
    }
    auto content = m.find("content");
    std::string text;
    if (content != m.end() && content->is_string()) {
      text = content->get<std::string>();
    } else if (content != m.end() && content->is_array()) {
      for (const json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto t = part.is_object() ? part.find("text") : part.end();
        if (type == part.end() || !type->is_string() || type->get<std::string>() != "text" || t == part.end() ||
            !t->is_string()) {
          return r.fail(at + ".content parts must be {\"type\": \"text\", \"text\": string} (only text is supported)",
                        at + ".content");
        }
        text += t->get<std::string>();
      }
    } else {
      return r.fail(at + ".content must be a string or an array of text parts", at + ".content");
    }
    out.push_back({rs, std::move(text)});
  }
}

// ---- completion prompts ----

void read_prompts(Reader& r, const json& root, int n_vocab, std::vector<PromptInput>& out) {
  const char* shape = "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays "
                      "of token ids";
  auto it = root.find("prompt");
  if (it == root.end() || it->is_null()) return r.fail("'prompt' is required", "prompt");
  const json& p = *it;
  auto ids_of = [&](const json& a, PromptInput& in) {
    in.is_text = false;
    for (const json& v : a) {
      TokenId id = 0;
      if (!token_id(v, n_vocab, id)) {
        r.fail("'prompt' token ids must be integers from 0 to " + std::to_string(n_vocab - 1), "prompt");
        return false;
      }
      in.ids.push_back(id);
    }
    return true;
  };
  if (p.is_string()) {
    out.push_back({true, p.get<std::string>(), {}});
    return;
  }
  if (!p.is_array() || p.empty()) return r.fail(shape, "prompt");
  if (std::all_of(p.begin(), p.end(), [](const json& v) { return v.is_string(); })) {
    for (const json& v : p) out.push_back({true, v.get<std::string>(), {}});
  } else if (std::all_of(p.begin(), p.end(), [](const json& v) { return v.is_number(); })) {
    PromptInput in;
    if (ids_of(p, in)) out.push_back(std::move(in));
  } else if (std::all_of(p.begin(), p.end(), [](const json& v) { return v.is_array() && !v.empty(); })) {
    for (const json& a : p) {
      PromptInput in;
      if (!ids_of(a, in)) return;
      out.push_back(std::move(in));
    }
  } else {
    r.fail(shape, "prompt");
  }
}

}  // namespace

ApiError bad_request(std::string message, std::string param) {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

ApiResult<CompletionRequest> parse_chat_request(std::string_view body, const RequestLimits& limits) {
  auto root = parse_object(body);
  if (!root) return root.error();
  Reader r(*root);
  CompletionRequest req;
  req.endpoint = Endpoint::chat;
  read_messages(r, *root, req.messages);
  read_common(r, limits, req);
  const auto logprobs = r.boolean("logprobs");
  const auto top = r.integer("top_logprobs", 0, limits.max_top_logprobs);
  if (logprobs.value_or(false)) req.logprobs = static_cast<int>(top.value_or(0));
  if (r.failed()) return r.error();
  return req;
}

ApiResult<CompletionRequest> parse_completion_request(std::string_view body, const RequestLimits& limits) {
  auto root = parse_object(body);
  if (!root) return root.error();
  Reader r(*root);
  CompletionRequest req;
  req.endpoint = Endpoint::completions;
  read_prompts(r, *root, limits.n_vocab, req.prompts);
  read_common(r, limits, req);
  if (auto lp = r.integer("logprobs", 0, limits.max_top_logprobs)) req.logprobs = static_cast<int>(*lp);
  if (r.boolean("echo").value_or(false)) r.fail("'echo' is not supported", "echo");
  if (r.failed()) return r.error();
  return req;
}

ApiResult<TokenizeRequest> parse_tokenize_request(std::string_view body) {
  auto root = parse_object(body);
  if (!root) return root.error();
  Reader r(*root);
  TokenizeRequest req;
  const json* text = r.get("prompt") ? r.get("prompt") : r.get("content");
  if (!text || !text->is_string()) return bad_request("'prompt' (or 'content') must be a string", "prompt");
  req.text = text->get<std::string>();
  if (auto add = r.boolean("add_special_tokens")) req.add_special_tokens = *add;
  if (r.failed()) return r.error();
  return req;
}

ApiResult<std::vector<TokenId>> parse_detokenize_request(std::string_view body, const RequestLimits& limits) {
  auto root = parse_object(body);
  if (!root) return root.error();
  auto it = root->find("tokens");
  const std::string what = "'tokens' must be an array of token ids from 0 to " + std::to_string(limits.n_vocab - 1);
  if (it == root->end() || !it->is_array()) return bad_request(what, "tokens");
  std::vector<TokenId> ids;
  for (const json& v : *it) {
    TokenId id = 0;
    if (!token_id(v, limits.n_vocab, id)) return bad_request(what, "tokens");
    ids.push_back(id);
  }
  return ids;
}

}  // namespace troupe::http
