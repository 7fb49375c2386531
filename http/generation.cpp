// generation.cpp: the choices of one completion call (see generation.hpp).
#include "generation.hpp"

#include <chrono>
#include <cstdio>
#include <random>

namespace troupe::http {

std::string new_response_id(const std::string& prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[25];
  std::snprintf(hex, sizeof hex, "%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffull));
  return prefix + hex;
}

Generation::Generation(CompletionRequest request, const Backend& backend, const ServerOptions& options)
    : request_(std::move(request)), backend_(backend), options_(options) {
  meta_.endpoint = request_.endpoint;
  meta_.id = new_response_id(request_.endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-");
  meta_.created = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  meta_.model = backend.model_id;
  const size_t n_prompts = request_.endpoint == Endpoint::chat ? 1 : request_.prompts.size();
  choices_.resize(n_prompts * request_.n);
}

std::optional<ApiError> Generation::prepare() {
  const bool chat = request_.endpoint == Endpoint::chat;
  const std::string prompt_param = chat ? "messages" : "prompt";
  std::vector<std::vector<TokenId>> prompts;
  if (chat) {
    auto ids = backend_.encode_chat(request_.messages);
    if (!ids) return bad_request("the messages cannot be rendered with the model's chat template: " +
                                 ids.error().message, "messages");
    prompts.push_back(std::move(*ids));
  } else {
    for (auto& p : request_.prompts) {
      prompts.push_back(p.is_text ? backend_.encode_text(p.text) : std::move(p.ids));
    }
    std::vector<PromptInput>().swap(request_.prompts);
  }

  std::random_device random_seed;
  for (size_t ip = 0; ip < prompts.size(); ++ip) {
    const int64_t n_prompt = static_cast<int64_t>(prompts[ip].size());
    if (n_prompt == 0) return bad_request("the prompt is empty", prompt_param);
    if (n_prompt >= backend_.n_ctx) {
      return bad_request("the prompt is " + std::to_string(n_prompt) + " tokens; the context holds " +
                             std::to_string(backend_.n_ctx) + " in all, prompt and completion",
                         prompt_param);
    }
    const int64_t room = backend_.n_ctx - n_prompt;
    if (request_.max_tokens && *request_.max_tokens > room) {
      return bad_request("the prompt (" + std::to_string(n_prompt) + " tokens) plus " + request_.max_tokens_param +
                             " (" + std::to_string(*request_.max_tokens) + ") is more than the context of " +
                             std::to_string(backend_.n_ctx) + " tokens",
                         request_.max_tokens_param);
    }
    for (int k = 0; k < request_.n; ++k) {
      Request r;
      r.prompt = k + 1 < request_.n ? prompts[ip] : std::move(prompts[ip]);
      r.params = request_.params;
      r.params.max_tokens = static_cast<int>(request_.max_tokens.value_or(room));
      r.params.sampling.seed = request_.seed ? *request_.seed + k : (uint64_t{random_seed()} << 32) ^ random_seed();
      r.logprobs = request_.logprobs;
      if (request_.stream) r.credit = options_.stream_credit;
      requests_.push_back(std::move(r));
    }
  }
  return std::nullopt;
}

LogprobEntry Generation::logprob_entry(const TokenEvent& event, size_t offset) const {
  LogprobEntry e;
  e.token = backend_.tokenizer.token_to_piece(event.token, /*render_special=*/true);
  e.logprob = event.logprob;
  e.text_offset = offset;
  for (const auto& [id, lp] : event.top) e.top.emplace_back(backend_.tokenizer.token_to_piece(id, true), lp);
  return e;
}

std::string Generation::stream_start() const {
  if (request_.endpoint != Endpoint::chat) return {};
  std::string out;
  for (int i = 0; i < n_choices(); ++i) {
    ChoiceOut c;
    c.index = i;
    c.role = true;
    out += sse(format_chunk(meta_, c));
  }
  return out;
}

std::string Generation::on_token(int index, const TokenEvent& event) {
  Choice& ch = choices_[index];
  const bool with_logprobs = request_.logprobs >= 0;
  const size_t offset = ch.text_length;
  ch.text_length += event.text.size();
  if (!request_.stream) {
    ch.text += event.text;
    if (with_logprobs) ch.logprobs.push_back(logprob_entry(event, offset));
    return {};
  }
  if (event.text.empty() && !with_logprobs) return {};
  ChoiceOut c;
  c.index = index;
  c.text = event.text;
  c.with_logprobs = with_logprobs;
  if (with_logprobs) c.logprobs.push_back(logprob_entry(event, offset));
  return sse(format_chunk(meta_, c));
}

std::string Generation::on_finished(int index, const FinishEvent& event) {
  Choice& ch = choices_[index];
  if (ch.done) return {};
  ch.done = true;
  ++n_done_;
  ch.finish = event.reason;
  ch.n_prompt = event.n_prompt;
  ch.n_generated = event.n_generated;
  ch.text_length += event.text.size();
  if (!request_.stream) {
    ch.text += event.text;
    return {};
  }
  if (event.reason == FinishReason::cancelled) return {};
  ChoiceOut c;
  c.index = index;
  c.text = event.text;
  c.finish = event.reason;
  return sse(format_chunk(meta_, c));
}

Usage Generation::usage() const {
  Usage u;
  for (int i = 0; i < n_choices(); ++i) {
    if (i % request_.n == 0) u.prompt_tokens += choices_[i].n_prompt;  // a prompt counts once, however many samples
    u.completion_tokens += choices_[i].n_generated;
  }
  return u;
}

std::string Generation::stream_end() const {
  std::string out;
  if (request_.include_usage) out += sse(format_usage_chunk(meta_, usage()));
  return out + "data: [DONE]\n\n";
}

std::string Generation::response_body() const {
  std::vector<ChoiceOut> out;
  for (int i = 0; i < n_choices(); ++i) {
    ChoiceOut c;
    c.index = i;
    c.text = choices_[i].text;
    c.with_logprobs = request_.logprobs >= 0;
    c.logprobs = choices_[i].logprobs;
    c.finish = choices_[i].finish;
    out.push_back(std::move(c));
  }
  return format_response(meta_, out, usage());
}

}  // namespace troupe::http
