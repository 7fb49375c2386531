// generation.hpp: one /v1/chat/completions or /v1/completions call: its choices (one engine request each), their
// prompts, and what goes back to the client as the engine's events arrive. Plain C++ and no sockets: the session
// feeds it events on its strand and writes what it returns.
//
//   prepare()            prompts to token ids, lengths checked against the context, one engine Request per choice
//   stream_start()       chat: the first chunk of each choice, {"role": "assistant"}
//   on_token/on_finished a choice's event: streamed, the SSE events to send; otherwise the text is gathered
//   stream_end()         the usage chunk (stream_options.include_usage) and [DONE]
//   response_body()      not streamed: the whole response once every choice finished
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine.hpp"
#include "openai.hpp"
#include "server.hpp"

namespace troupe::http {

class Generation {
 public:
  Generation(CompletionRequest request, const Backend& backend, const ServerOptions& options);

  // Runs off the io threads (tokenizing a megabyte of prompt takes a while). After it, requests() holds one
  // engine Request per choice, choice i = prompt (i / n), sample (i % n).
  std::optional<ApiError> prepare();
  std::vector<Request>& requests() { return requests_; }
  int n_choices() const { return static_cast<int>(choices_.size()); }
  bool stream() const { return request_.stream; }
  const ResponseMeta& meta() const { return meta_; }

  std::string stream_start() const;
  std::string on_token(int choice, const TokenEvent& event);
  std::string on_finished(int choice, const FinishEvent& event);
  bool finished() const { return n_done_ == n_choices(); }
  std::string stream_end() const;
  std::string response_body() const;

  static std::string sse(const std::string& data) { return "data: " + data + "\n\n"; }

 private:
  struct Choice {
    std::string text;                     // not streamed: all of it; streamed: only its length matters
    size_t text_length = 0;
    std::vector<LogprobEntry> logprobs;   // not streamed
    FinishReason finish = FinishReason::length;
    bool done = false;
    int n_prompt = 0;
    int n_generated = 0;
  };

  LogprobEntry logprob_entry(const TokenEvent& event, size_t offset) const;
  Usage usage() const;

  CompletionRequest request_;
  const Backend& backend_;
  const ServerOptions& options_;
  ResponseMeta meta_;
  std::vector<Choice> choices_;
  std::vector<Request> requests_;
  int n_done_ = 0;
};

// A new response id: prefix ("chatcmpl-", "cmpl-") and 24 random hex digits.
std::string new_response_id(const std::string& prefix);

}  // namespace troupe::http
