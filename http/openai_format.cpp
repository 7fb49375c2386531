// openai_format.cpp: response bodies, stream chunks and error bodies from plain structs (see openai.hpp).
#include <nlohmann/json.hpp>

#include <cmath>

#include "openai.hpp"

namespace troupe::http {

namespace {

using ojson = nlohmann::ordered_json;  // keys in the order OpenAI writes them

// One line of compact JSON; token bytes that are not valid UTF-8 (a token can end inside a character) become U+FFFD.
std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

ojson nullable(const std::string& s) { return s.empty() ? ojson(nullptr) : ojson(s); }

// Log-probabilities of -inf (a token the model gives no mass) cannot be written as JSON numbers.
double finite(float logprob) { return std::isfinite(logprob) ? logprob : -9999.0; }

ojson bytes_of(const std::string& s) {
  ojson out = ojson::array();
  for (unsigned char c : s) out.push_back(static_cast<int>(c));
  return out;
}

// Chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
ojson chat_logprobs(const std::vector<LogprobEntry>& entries) {
  ojson content = ojson::array();
  for (const auto& e : entries) {
    ojson top = ojson::array();
    for (const auto& [token, lp] : e.top) {
      top.push_back({{"token", token}, {"logprob", finite(lp)}, {"bytes", bytes_of(token)}});
    }
    content.push_back({{"token", e.token}, {"logprob", finite(e.logprob)}, {"bytes", bytes_of(e.token)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

// Legacy completions shape: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.
ojson completion_logprobs(const std::vector<LogprobEntry>& entries) {
  ojson tokens = ojson::array(), lps = ojson::array(), tops = ojson::array(), offsets = ojson::array();
  for (const auto& e : entries) {
    tokens.push_back(e.token);
    lps.push_back(finite(e.logprob));
    ojson top = ojson::object();
    for (const auto& [token, lp] : e.top) top[token] = finite(lp);
    tops.push_back(std::move(top));
    offsets.push_back(e.text_offset);
  }
  return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(lps)}, {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

ojson logprobs_of(Endpoint endpoint, const ChoiceOut& c) {
  if (!c.with_logprobs) return nullptr;
  return endpoint == Endpoint::chat ? chat_logprobs(c.logprobs) : completion_logprobs(c.logprobs);
}

ojson finish_of(const ChoiceOut& c) { return c.finish ? ojson(finish_reason_name(*c.finish)) : ojson(nullptr); }

ojson usage_of(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens}, {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

ojson head(const ResponseMeta& meta, bool chunk) {
  const char* object = meta.endpoint == Endpoint::completions ? "text_completion"
                       : chunk                                ? "chat.completion.chunk"
                                                              : "chat.completion";
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

const char* finish_reason_name(FinishReason reason) { return reason == FinishReason::length ? "length" : "stop"; }

std::string format_chunk(const ResponseMeta& meta, const ChoiceOut& c) {
  ojson j = head(meta, true);
  ojson choice = {{"index", c.index}};
  if (meta.endpoint == Endpoint::chat) {
    ojson delta = ojson::object();
    if (c.role) delta["role"] = "assistant";
    if (c.role || !c.text.empty()) delta["content"] = c.text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = c.text;
  }
  choice["logprobs"] = logprobs_of(meta.endpoint, c);
  choice["finish_reason"] = finish_of(c);
  j["choices"] = ojson::array({std::move(choice)});
  return dump(j);
}

std::string format_usage_chunk(const ResponseMeta& meta, const Usage& usage) {
  ojson j = head(meta, true);
  j["choices"] = ojson::array();
  j["usage"] = usage_of(usage);
  return dump(j);
}

std::string format_response(const ResponseMeta& meta, const std::vector<ChoiceOut>& choices, const Usage& usage) {
  ojson j = head(meta, false);
  ojson out = ojson::array();
  for (const auto& c : choices) {
    ojson choice = {{"index", c.index}};
    if (meta.endpoint == Endpoint::chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    choice["logprobs"] = logprobs_of(meta.endpoint, c);
    choice["finish_reason"] = finish_of(c);
    out.push_back(std::move(choice));
  }
  j["choices"] = std::move(out);
  j["usage"] = usage_of(usage);
  return dump(j);
}

std::string format_error(const ApiError& e) {
  return dump({{"error",
                {{"message", e.message}, {"type", e.type}, {"param", nullable(e.param)}, {"code", nullable(e.code)}}}});
}

namespace {

ojson model_object(const std::string& model_id, int64_t created) {
  return {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "troupe"}};
}

}  // namespace

std::string format_models(const std::string& model_id, int64_t created) {
  return dump({{"object", "list"}, {"data", ojson::array({model_object(model_id, created)})}});
}

std::string format_model(const std::string& model_id, int64_t created) {
  return dump(model_object(model_id, created));
}

std::string format_tokens(const std::vector<TokenId>& ids, int max_model_len) {
  return dump({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", max_model_len}});
}

std::string format_detokenized(const std::string& text) { return dump({{"prompt", text}}); }

std::string format_health(const std::string& status, const std::string& detail) {
  ojson j = {{"status", status}};
  if (!detail.empty()) j["detail"] = detail;
  return dump(j);
}

ApiError api_error(const Error& error) {
  ApiError e;
  switch (error.kind) {
    case ErrorKind::invalid_argument:
      e.message = error.message;
      break;
    case ErrorKind::overloaded:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "rate_limit_exceeded";
      e.message = "the server is at capacity; retry later";
      e.retry_after = std::max(1, static_cast<int>(std::ceil(error.retry_after)));
      break;
    case ErrorKind::unavailable:
    case ErrorKind::cancelled:
      e.status = 503;
      e.type = "service_unavailable";
      e.message = error.kind == ErrorKind::cancelled ? "the request was cancelled" : error.message;
      break;
    default:
      e.status = 500;
      e.type = "internal_error";
      e.message = "internal error";
      break;
  }
  return e;
}

}  // namespace troupe::http
