// openai.hpp: the OpenAI API's JSON, and only here (nothing past http/ sees JSON). Request bodies are parsed and
// validated into plain structs as early as possible; responses, stream chunks and error bodies are built from plain
// structs. The fields, ranges and shapes are docs/http-contract.md's.
//
//   parse_chat_request(body, limits)        POST /v1/chat/completions body -> CompletionRequest, or a 400 ApiError
//   parse_completion_request(body, limits)  POST /v1/completions body -> CompletionRequest, or a 400 ApiError
//   parse_tokenize_request / parse_detokenize_request
//   format_chunk / format_usage_chunk / format_response   what goes back for a generation
//   format_error                                           {"error": {"message", "type", "param", "code"}}
//   api_error(Error)                                       an engine error as the HTTP status and type it maps to
//
// Every body is checked before any field is looked at: valid JSON (RFC 8259: no NaN or Infinity, no trailing text),
// valid UTF-8 in every string and key (no lone surrogate escapes), nesting at most kMaxJsonDepth, numbers finite.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "chat_template.hpp"
#include "error.hpp"
#include "generate.hpp"
#include "tokenizer.hpp"

namespace troupe::http {

constexpr int kMaxJsonDepth = 64;
constexpr int kMaxStopStrings = 4;
constexpr int kMaxStopBytes = 256;

// An error as the client sees it. `param` and `code` are JSON null when empty.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;
  std::string code;
  int retry_after = 0;  // 429: whole seconds for the Retry-After header
};

ApiError bad_request(std::string message, std::string param = {});

// A value or the ApiError that refuses it.
template <class T>
class ApiResult {
 public:
  ApiResult(T value) : v_(std::move(value)) {}
  ApiResult(ApiError error) : v_(std::move(error)) {}
  explicit operator bool() const { return v_.index() == 0; }
  T& operator*() { return std::get<0>(v_); }
  T* operator->() { return &std::get<0>(v_); }
  const ApiError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ApiError> v_;
};

// What the server allows beyond the fixed ranges of the contract.
struct RequestLimits {
  int max_n = 8;             // --max-n
  int max_top_logprobs = 20; // --max-top-logprobs
  int n_vocab = 0;           // token ids (prompt ids, logit_bias keys) must be below this
};

enum class Endpoint { chat, completions };

// One prompt of /v1/completions: text, or token ids.
struct PromptInput {
  bool is_text = true;
  std::string text;
  std::vector<TokenId> ids;
};

// A validated /v1/chat/completions or /v1/completions request.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::chat;
  std::optional<std::string> model;       // absent: whatever the server serves
  std::vector<ChatMessage> messages;      // chat: text parts of a content array joined
  std::vector<PromptInput> prompts;       // completions: one or more prompts (choice index = prompt * n + k)
  std::optional<int64_t> max_tokens;      // absent: the rest of the context
  std::string max_tokens_param = "max_tokens";  // the field it came from (max_tokens | max_completion_tokens)
  GenerateParams params;                  // stop strings and sampling (seed set per choice later)
  std::optional<uint64_t> seed;           // choice k samples with seed + k
  int n = 1;
  int logprobs = -1;                      // -1: none; else the number of top alternatives (0: the chosen token only)
  bool stream = false;
  bool include_usage = false;             // stream_options.include_usage
};

ApiResult<CompletionRequest> parse_chat_request(std::string_view body, const RequestLimits& limits);
ApiResult<CompletionRequest> parse_completion_request(std::string_view body, const RequestLimits& limits);

struct TokenizeRequest {
  std::string text;             // "prompt" (alias "content")
  bool add_special_tokens = true;
};
ApiResult<TokenizeRequest> parse_tokenize_request(std::string_view body);
// The ids of {"tokens": [...]}, each below limits.n_vocab.
ApiResult<std::vector<TokenId>> parse_detokenize_request(std::string_view body, const RequestLimits& limits);

// ---- responses ----

struct ResponseMeta {
  Endpoint endpoint = Endpoint::chat;
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // unix seconds
  std::string model;
};

// One token's log-probability and its most likely alternatives, with the token text as bytes.
struct LogprobEntry {
  std::string token;
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;
  size_t text_offset = 0;  // completions: where the token's text starts in the choice's text
};

// A choice, whole (a response) or a piece of it (a chunk).
struct ChoiceOut {
  int index = 0;
  std::string text;                      // chat: message/delta content; completions: text
  bool role = false;                     // chunk: the delta carries {"role": "assistant"} (the first chat chunk)
  bool with_logprobs = false;            // "logprobs" is an object (else null)
  std::vector<LogprobEntry> logprobs;
  std::optional<FinishReason> finish;    // null until the choice ends
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Compact JSON on one line (SSE data lines), invalid UTF-8 from token bytes replaced by U+FFFD.
std::string format_chunk(const ResponseMeta& meta, const ChoiceOut& choice);
std::string format_usage_chunk(const ResponseMeta& meta, const Usage& usage);
std::string format_response(const ResponseMeta& meta, const std::vector<ChoiceOut>& choices, const Usage& usage);
std::string format_error(const ApiError& error);

std::string format_models(const std::string& model_id, int64_t created);  // GET /v1/models: the list
std::string format_model(const std::string& model_id, int64_t created);   // GET /v1/models/{id}: the one object
std::string format_tokens(const std::vector<TokenId>& ids, int max_model_len);
std::string format_detokenized(const std::string& text);
std::string format_health(const std::string& status, const std::string& detail = {});

// An engine error as the client sees it: overloaded 429, unavailable 503, invalid_argument 400, others 500 (with a
// generic message: no internals leave the server).
ApiError api_error(const Error& error);

const char* finish_reason_name(FinishReason reason);  // "stop" | "length"

}  // namespace troupe::http
