// fuzz_openai.cpp: libFuzzer target for the request parser and validator (http/openai_parse.cpp) and, on what it
// accepts, the response formatters (http/openai_format.cpp).
//
// Input: one selector byte, then the request body.
//   bits 0-1  0 /v1/chat/completions, 1 /v1/completions, 2 /tokenize, 3 /detokenize
//   bit 2     limits: the server's defaults and the default model's vocabulary (max_n 8, max_top_logprobs 20,
//             n_vocab 49152), or the smallest a server allows (max_n 1, max_top_logprobs 0, n_vocab 1)
// Checked, besides no crash, leak, hang or sanitizer report: an accepted request holds only what the contract
// allows (docs/http-contract.md: every range, as the float or int the engine gets, token ids inside the vocabulary,
// strings valid UTF-8, at most 4 stop strings of 1 to 256 bytes); a refused one is a 400 invalid_request_error with
// a one-line message; error bodies, responses and stream chunks built from it are JSON that reads back the same.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fuzz_model.hpp"
#include "openai.hpp"

namespace {

using namespace troupe;
using namespace troupe::http;
using json = nlohmann::json;

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_openai: %s\n", what);
    std::abort();
  }
}

json parse_back(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  require(!j.is_discarded(), "a formatted body is not JSON");
  return j;
}

void check_refusal(const ApiError& e) {
  require(e.status == 400 && e.type == "invalid_request_error", "a refused request is not a 400");
  require(!e.message.empty() && e.message.find('\n') == std::string::npos, "an error message is empty or multi-line");
  require(troupe::fuzz::valid_utf8(e.message) && troupe::fuzz::valid_utf8(e.param), "an error is not UTF-8");
  const json j = parse_back(format_error(e));
  require(j.at("error").at("message") == e.message, "the error body does not carry the message");
  require(e.param.empty() ? j["error"]["param"].is_null() : j["error"]["param"] == e.param, "the error's param");
}

bool in(double x, double lo, double hi) { return std::isfinite(x) && x >= lo && x <= hi; }

void check_request(const CompletionRequest& r, const RequestLimits& limits) {
  const SamplingParams& s = r.params.sampling;
  require(r.n >= 1 && r.n <= limits.max_n, "n out of range");
  require(r.logprobs >= -1 && r.logprobs <= limits.max_top_logprobs, "logprobs out of range");
  require(!r.max_tokens || *r.max_tokens >= 1, "max_tokens below 1");
  require(in(s.temperature, 0, 2), "temperature out of [0, 2]");
  require(in(s.top_p, 0, 1) && s.top_p > 0, "top_p out of (0, 1]");
  require(s.top_k >= 0 && s.top_k <= std::max(limits.n_vocab, 1), "top_k out of range");
  require(in(s.min_p, 0, 1), "min_p out of [0, 1]");
  require(in(s.presence_penalty, -2, 2) && in(s.frequency_penalty, -2, 2), "a penalty out of [-2, 2]");
  require(in(s.repetition_penalty, 0, 10) && s.repetition_penalty > 0, "repetition_penalty out of (0, 10]");
  for (const auto& [id, bias] : s.logit_bias) {
    require(id >= 0 && id < limits.n_vocab && in(bias, -100, 100), "a logit_bias entry out of range");
  }
  require(r.params.stop.size() <= static_cast<size_t>(kMaxStopStrings), "too many stop strings");
  for (const auto& stop : r.params.stop) {
    require(!stop.empty() && stop.size() <= static_cast<size_t>(kMaxStopBytes) && troupe::fuzz::valid_utf8(stop),
            "a bad stop string");
  }
  if (r.model) require(troupe::fuzz::valid_utf8(*r.model), "the model name is not UTF-8");
  if (r.endpoint == Endpoint::chat) {
    require(!r.messages.empty() && r.prompts.empty(), "a chat request without messages");
    for (const auto& m : r.messages) {
      require(m.role == "system" || m.role == "user" || m.role == "assistant", "a bad role");
      require(troupe::fuzz::valid_utf8(m.content), "message content is not UTF-8");
    }
  } else {
    require(!r.prompts.empty() && r.messages.empty(), "a completion request without prompts");
    for (const auto& p : r.prompts) {
      if (p.is_text) {
        require(troupe::fuzz::valid_utf8(p.text) && p.ids.empty(), "a text prompt is not UTF-8");
      } else {
        require(!p.ids.empty() && p.text.empty(), "an empty token prompt");
        for (TokenId id : p.ids) require(id >= 0 && id < limits.n_vocab, "a prompt token outside the vocabulary");
      }
    }
  }
}

// What goes back for an accepted request, built from its own strings and from raw body bytes as token bytes (a
// token can end inside a character: the formatters replace what is not UTF-8).
void check_formatting(const CompletionRequest& r, std::string_view raw) {
  ResponseMeta meta;
  meta.endpoint = r.endpoint;
  meta.id = r.endpoint == Endpoint::chat ? "chatcmpl-0" : "cmpl-0";
  meta.model = r.model.value_or("m");
  ChoiceOut c;
  c.text = r.endpoint == Endpoint::chat ? r.messages.front().content
                                        : (r.prompts.front().is_text ? r.prompts.front().text : std::string("x"));
  c.with_logprobs = r.logprobs >= 0;
  if (c.with_logprobs) {
    LogprobEntry e;
    e.token = std::string(raw.substr(0, 8));
    e.logprob = -INFINITY;
    e.top.emplace_back(std::string(raw.substr(raw.size() / 2, 5)), -1.5f);
    c.logprobs.push_back(e);
  }
  c.finish = FinishReason::stop;
  const json whole = parse_back(format_response(meta, {c}, {3, 4}));
  const json& choice = whole.at("choices").at(0);
  require((r.endpoint == Endpoint::chat ? choice.at("message").at("content") : choice.at("text")) == c.text,
          "the response does not carry the text");
  c.finish.reset();
  const json chunk = parse_back(format_chunk(meta, c));
  require(chunk.at("choices").size() == 1, "a chunk without its choice");
  parse_back(format_usage_chunk(meta, {1, 2}));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool smallest = data[0] & 4;
  const RequestLimits limits = smallest ? RequestLimits{1, 0, 1} : RequestLimits{8, 20, 49152};
  switch (data[0] & 3) {
    case 0:
    case 1: {
      auto r = (data[0] & 3) == 0 ? parse_chat_request(body, limits) : parse_completion_request(body, limits);
      if (!r) {
        check_refusal(r.error());
        return 0;
      }
      check_request(*r, limits);
      check_formatting(*r, body);
      return 0;
    }
    case 2: {
      auto r = parse_tokenize_request(body);
      if (!r) return check_refusal(r.error()), 0;
      require(troupe::fuzz::valid_utf8(r->text), "a tokenize prompt is not UTF-8");
      return 0;
    }
    default: {
      auto r = parse_detokenize_request(body, limits);
      if (!r) return check_refusal(r.error()), 0;
      for (TokenId id : *r) require(id >= 0 && id < limits.n_vocab, "a detokenize id outside the vocabulary");
      parse_back(format_detokenized(std::string(body)));
      return 0;
    }
  }
}
