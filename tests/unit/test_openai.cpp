// The OpenAI JSON layer (http/openai.hpp): every field's type and range refused with a 400 naming the field, strict
// JSON (depth, NaN, UTF-8, surrogates), the mapping onto GenerateParams, and the shapes of responses, chunks and
// errors. No model or server: plain strings in, plain structs and strings out.
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <limits>
#include <string>

#include "openai.hpp"

using namespace troupe;
using namespace troupe::http;
using json = nlohmann::json;

namespace {

const RequestLimits kLimits{8, 20, 49152};

std::string chat_with(const std::string& fields) {
  return R"({"messages": [{"role": "user", "content": "hi"}])" + (fields.empty() ? "" : ", " + fields) + "}";
}

// The ApiError of a body that must be refused (fails the test when it is accepted).
ApiError chat_error(const std::string& body) {
  auto r = parse_chat_request(body, kLimits);
  REQUIRE_MESSAGE(!r, "accepted: " << body);
  return r.error();
}

ApiError completion_error(const std::string& body) {
  auto r = parse_completion_request(body, kLimits);
  REQUIRE_MESSAGE(!r, "accepted: " << body);
  return r.error();
}

}  // namespace

TEST_CASE("openai: a full chat request maps onto the engine's parameters") {
  auto r = parse_chat_request(R"({
    "model": "m", "messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    "max_tokens": 12, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "presence_penalty": 1,
    "frequency_penalty": -1, "repetition_penalty": 1.1, "seed": 7, "stop": "\n", "n": 2, "logprobs": true,
    "top_logprobs": 3, "logit_bias": {"5": -100, "17": 2.5}, "stream": true, "stream_options": {"include_usage": true},
    "user": "u"})",
                              kLimits);
  REQUIRE(r);
  CHECK(r->endpoint == Endpoint::chat);
  CHECK(*r->model == "m");
  REQUIRE(r->messages.size() == 2);
  CHECK(r->messages[0].role == "system");
  CHECK(r->messages[1].content == "ab");
  CHECK(*r->max_tokens == 12);
  CHECK(r->max_tokens_param == "max_tokens");
  const SamplingParams& s = r->params.sampling;
  CHECK(s.temperature == doctest::Approx(0.5));
  CHECK(s.top_p == doctest::Approx(0.9));
  CHECK(s.top_k == 40);
  CHECK(s.min_p == doctest::Approx(0.05));
  CHECK(s.presence_penalty == doctest::Approx(1));
  CHECK(s.frequency_penalty == doctest::Approx(-1));
  CHECK(s.repetition_penalty == doctest::Approx(1.1));
  CHECK(*r->seed == 7);
  CHECK(r->params.stop == std::vector<std::string>{"\n"});
  CHECK(r->n == 2);
  CHECK(r->logprobs == 3);
  auto bias = s.logit_bias;
  std::sort(bias.begin(), bias.end());
  CHECK(bias == std::vector<std::pair<TokenId, float>>{{5, -100.0f}, {17, 2.5f}});
  CHECK(r->stream);
  CHECK(r->include_usage);
}

TEST_CASE("openai: defaults, null fields and max_completion_tokens") {
  auto r = parse_chat_request(chat_with(R"("temperature": null, "stop": null, "max_completion_tokens": 5, "logprobs": false, "top_logprobs": 2)"), kLimits);
  REQUIRE(r);
  CHECK(!r->model);
  CHECK(r->params.sampling.temperature == 1.0f);
  CHECK(r->params.sampling.top_p == 1.0f);
  CHECK(*r->max_tokens == 5);
  CHECK(r->max_tokens_param == "max_completion_tokens");
  CHECK(r->n == 1);
  CHECK(r->logprobs == -1);  // top_logprobs without logprobs: none
  CHECK(!r->stream);
  auto plain = parse_chat_request(chat_with(""), kLimits);
  REQUIRE(plain);
  CHECK(!plain->max_tokens);  // the rest of the context, decided once the prompt is tokenized
  CHECK(!plain->seed);
}

TEST_CASE("openai: every type and range error is a 400 naming its field") {
  const std::pair<const char*, const char*> cases[] = {
      {R"("max_tokens": "ten")", "max_tokens"},
      {R"("max_tokens": -5)", "max_tokens"},
      {R"("max_tokens": 0)", "max_tokens"},
      {R"("max_tokens": 1.5)", "max_tokens"},
      {R"("max_tokens": 99999999999999999999999)", "max_tokens"},
      {R"("max_tokens": 18446744073709551615)", "max_tokens"},
      {R"("max_completion_tokens": "x")", "max_completion_tokens"},
      {R"("temperature": 2.5)", "temperature"},
      {R"("temperature": -0.1)", "temperature"},
      {R"("temperature": "hot")", "temperature"},
      {R"("temperature": 1e308)", "temperature"},
      {R"("top_p": 0)", "top_p"},
      {R"("top_p": 1.5)", "top_p"},
      {R"("top_k": -1)", "top_k"},
      {R"("top_k": 1e20)", "top_k"},
      {R"("min_p": 1.5)", "min_p"},
      {R"("presence_penalty": 3)", "presence_penalty"},
      {R"("frequency_penalty": -2.5)", "frequency_penalty"},
      {R"("repetition_penalty": 0)", "repetition_penalty"},
      {R"("repetition_penalty": 11)", "repetition_penalty"},
      {R"("seed": "x")", "seed"},
      {R"("seed": 1.5)", "seed"},
      {R"("seed": 18446744073709551616)", "seed"},
      {R"("stop": ["a", "b", "c", "d", "e"])", "stop"},
      {R"("stop": 7)", "stop"},
      {R"("stop": [7])", "stop"},
      {R"("stop": "")", "stop"},
      {R"("n": 9)", "n"},
      {R"("n": 0)", "n"},
      {R"("n": 1.5)", "n"},
      {R"("n": 4294967297)", "n"},
      {R"("logprobs": 1)", "logprobs"},
      {R"("logprobs": true, "top_logprobs": 21)", "top_logprobs"},
      {R"("top_logprobs": -1)", "top_logprobs"},
      {R"("logit_bias": {"49152": 1})", "logit_bias"},
      {R"("logit_bias": {"5": 101})", "logit_bias"},
      {R"("logit_bias": {"five": 1})", "logit_bias"},
      {R"("logit_bias": {"-1": 1})", "logit_bias"},
      {R"("logit_bias": {"99999999999999999999": 1})", "logit_bias"},
      {R"("logit_bias": {"5": "x"})", "logit_bias"},
      {R"("logit_bias": [1])", "logit_bias"},
      {R"("stream": "yes")", "stream"},
      {R"("stream_options": 1)", "stream_options"},
      {R"("stream_options": {"include_usage": "yes"})", "stream_options"},
      {R"("model": 5)", "model"},
      {R"("user": 5)", "user"},
  };
  for (const auto& [fields, param] : cases) {
    CAPTURE(fields);
    const ApiError e = chat_error(chat_with(fields));
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == param);
    CHECK(!e.message.empty());
  }
  const std::string long_stop = R"("stop": ")" + std::string(257, 'x') + "\"";
  CHECK(chat_error(chat_with(long_stop)).param == "stop");
  CHECK(parse_chat_request(chat_with(R"("stop": ")" + std::string(256, 'x') + "\""), kLimits));
}

// Found by fuzz_openai: 1e-300 is in (0, 1], but the engine gets a float, and its float is 0 (a repetition_penalty of
// 0 then divides logits by zero).
TEST_CASE("openai: a number in range whose float is not is refused") {
  for (const char* field : {"top_p", "repetition_penalty"}) {
    for (const char* value : {"1e-300", "1e-46", "4.9e-324"}) {
      const std::string fields = std::string("\"") + field + "\": " + value;
      CAPTURE(fields);
      const ApiError e = chat_error(chat_with(fields));
      CHECK(e.param == field);
      CHECK(e.status == 400);
    }
  }
  auto tiny = parse_chat_request(chat_with(R"("top_p": 1e-30, "repetition_penalty": 1e-30, "temperature": 1e-300)"), kLimits);
  REQUIRE(tiny);
  CHECK(tiny->params.sampling.top_p > 0);
  CHECK(tiny->params.sampling.repetition_penalty > 0);
  CHECK(tiny->params.sampling.temperature == 0);  // [0, 2] holds 0: greedy
}

TEST_CASE("openai: the limits from the command line bound n and top_logprobs") {
  const RequestLimits tight{2, 5, 100};
  CHECK(!parse_chat_request(chat_with(R"("n": 3)"), tight));
  CHECK(parse_chat_request(chat_with(R"("n": 2)"), tight));
  CHECK(!parse_chat_request(chat_with(R"("logprobs": true, "top_logprobs": 6)"), tight));
  CHECK(!parse_chat_request(chat_with(R"("logit_bias": {"100": 1})"), tight));
  CHECK(parse_chat_request(chat_with(R"("logit_bias": {"99": 1})"), tight));
}

TEST_CASE("openai: chat messages: roles, content shapes, and the field named in the error") {
  CHECK(chat_error(R"({"max_tokens": 4})").param == "messages");
  CHECK(chat_error(R"({"messages": "hi"})").param == "messages");
  CHECK(chat_error(R"({"messages": []})").param == "messages");
  CHECK(chat_error(R"({"messages": [5]})").param == "messages[0]");
  CHECK(chat_error(R"({"messages": [{"role": "robot", "content": "hi"}]})").param == "messages[0].role");
  CHECK(chat_error(R"({"messages": [{"content": "hi"}]})").param == "messages[0].role");
  CHECK(chat_error(R"({"messages": [{"role": "user"}]})").param == "messages[0].content");
  CHECK(chat_error(R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 5}]})").param ==
        "messages[1].content");
  CHECK(chat_error(R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})")
            .param == "messages[0].content");
  CHECK(parse_chat_request(R"({"messages": [{"role": "assistant", "content": ""}, {"role": "user", "content": []}]})",
                           kLimits));
}

TEST_CASE("openai: strict JSON: malformed, not an object, NaN, Infinity, trailing text") {
  for (const char* body : {"", "{", R"({"messages": [{"role": "user", "content": "hi"}])", "nul", "{} x", "{,}",
                           "{'messages': []}", "null", "[]", "\"text\"", "42", "{\"a\": NaN}", "{\"a\": Infinity}",
                           "{\"a\": -Infinity}", "{\"a\": nan}", "{\"a\": 1,}"}) {
    CAPTURE(body);
    const ApiError e = chat_error(body);
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param.empty());
  }
  // nlohmann's own message quotes the bytes it read last: the request's text is not echoed back
  const ApiError e = chat_error(R"({"messages": [{"role": "user", "content": "zebra-4711"}], "x": zebra})");
  CHECK(e.message.find("zebra") == std::string::npos);
  CHECK(e.message.find("last read") == std::string::npos);
}

TEST_CASE("openai: nesting deeper than 64 levels is refused without recursion") {
  auto nested = [](int depth) {
    std::string s = R"({"messages": [{"role": "user", "content": "hi"}], "user": )";
    // the body object is level 1, so depth - 1 more levels
    for (int i = 1; i < depth; ++i) s += "[";
    for (int i = 1; i < depth; ++i) s += "]";
    return s + "}";
  };
  CHECK(chat_error(nested(64)).param == "user");  // parsed (64 deep): refused only because "user" is not a string
  CHECK(chat_error(nested(65)).param.empty());    // refused as JSON
  CHECK(chat_error(std::string(400000, '[') + std::string(400000, ']')).status == 400);
  CHECK(chat_error(std::string(500000, '[')).status == 400);
}

TEST_CASE("openai: invalid UTF-8 and lone surrogate escapes are refused but a surrogate pair is accepted") {
  for (const std::string bad : {"\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\xe2\x82", "\x80", "\xf8\x88"}) {
    CAPTURE(bad);
    CHECK(chat_error(R"({"messages": [{"role": "user", "content": "x)" + bad + R"("}]})").status == 400);
    CHECK(!parse_tokenize_request(R"({"prompt": ")" + bad + "\"}"));
  }
  CHECK(chat_error("{\"mess\xff" R"(ages": [{"role": "user", "content": "hi"}]})").status == 400);
  for (const char* esc : {R"(\ud800)", R"(\udc00)", R"(\ud800x)", R"(\ud800\u0041)", R"(\udfff\ud800)", R"(\ud83d)"}) {
    CAPTURE(esc);
    CHECK(chat_error(R"({"messages": [{"role": "user", "content": "a)" + std::string(esc) + R"("}]})").status == 400);
  }
  auto ok = parse_tokenize_request(R"({"prompt": "\ud83d\ude00 ok"})");
  REQUIRE(ok);
  CHECK(ok->text == "\xf0\x9f\x98\x80 ok");
}

TEST_CASE("openai: a number too large for a double is refused by the field it is in") {
  CHECK(chat_error(chat_with(R"("max_tokens": 1e400)")).param == "max_tokens");
  CHECK(chat_error(chat_with(R"("temperature": -1e400)")).param == "temperature");
  CHECK(chat_error(chat_with(R"("logit_bias": {"5": 1e400})")).param == "logit_bias");
  CHECK(completion_error(R"({"prompt": [1e400], "max_tokens": 1})").param == "prompt");
  auto d = parse_detokenize_request(R"({"tokens": [1, 1E+999]})", kLimits);
  REQUIRE(!d);
  CHECK(d.error().param == "tokens");
  CHECK(chat_error(chat_with(R"("top_p": 1e-400)")).param == "top_p");  // underflows to 0: out of (0, 1]
}

TEST_CASE("openai: completion prompts: text, texts, ids, arrays of ids") {
  auto one = parse_completion_request(R"({"prompt": "Once", "logprobs": 2, "echo": false})", kLimits);
  REQUIRE(one);
  CHECK(one->endpoint == Endpoint::completions);
  REQUIRE(one->prompts.size() == 1);
  CHECK(one->prompts[0].is_text);
  CHECK(one->prompts[0].text == "Once");
  CHECK(one->logprobs == 2);
  auto texts = parse_completion_request(R"({"prompt": ["a", "b"], "n": 3})", kLimits);
  REQUIRE(texts);
  CHECK(texts->prompts.size() == 2);
  CHECK(texts->n == 3);
  auto ids = parse_completion_request(R"({"prompt": [1, 2, 49151]})", kLimits);
  REQUIRE(ids);
  REQUIRE(ids->prompts.size() == 1);
  CHECK(!ids->prompts[0].is_text);
  CHECK(ids->prompts[0].ids == std::vector<TokenId>{1, 2, 49151});
  auto arrays = parse_completion_request(R"({"prompt": [[1, 2], [3]]})", kLimits);
  REQUIRE(arrays);
  REQUIRE(arrays->prompts.size() == 2);
  CHECK(arrays->prompts[1].ids == std::vector<TokenId>{3});
  CHECK(parse_completion_request(R"({"prompt": "x", "logprobs": 0})", kLimits)->logprobs == 0);
  CHECK(parse_completion_request(R"({"prompt": "x"})", kLimits)->logprobs == -1);

  for (const char* body : {R"({"max_tokens": 4})", R"({"prompt": 5})", R"({"prompt": []})", R"({"prompt": [1, "a"]})",
                           R"({"prompt": [[1, 2], "a"]})", R"({"prompt": [[]]})", R"({"prompt": [-1]})",
                           R"({"prompt": [49152]})", R"({"prompt": [4294967297]})", R"({"prompt": [1.5]})",
                           R"({"prompt": {"a": 1}})", R"({"prompt": [[1], [-2]]})"}) {
    CAPTURE(body);
    CHECK(completion_error(body).param == "prompt");
  }
  CHECK(completion_error(R"({"prompt": "hi", "echo": true})").param == "echo");
  CHECK(completion_error(R"({"prompt": "hi", "logprobs": 21})").param == "logprobs");
  CHECK(completion_error(R"({"prompt": "hi", "logprobs": true})").param == "logprobs");
}

TEST_CASE("openai: /tokenize and /detokenize bodies") {
  auto t = parse_tokenize_request(R"({"content": "hello", "add_special_tokens": false})");
  REQUIRE(t);
  CHECK(t->text == "hello");
  CHECK(!t->add_special_tokens);
  CHECK(parse_tokenize_request(R"({"prompt": "x"})")->add_special_tokens);
  CHECK(parse_tokenize_request(R"({"prompt": 5})").error().param == "prompt");
  CHECK(parse_tokenize_request(R"({})").error().param == "prompt");
  CHECK(parse_tokenize_request(R"({"prompt": "x", "add_special_tokens": 1})").error().param == "add_special_tokens");
  auto d = parse_detokenize_request(R"({"tokens": [0, 49151]})", kLimits);
  REQUIRE(d);
  CHECK(*d == std::vector<TokenId>{0, 49151});
  for (const char* body : {R"({"tokens": "abc"})", R"({"tokens": [999999]})", R"({"tokens": [-1]})", R"({})",
                           R"({"tokens": [1.5]})"}) {
    CAPTURE(body);
    auto e = parse_detokenize_request(body, kLimits);
    REQUIRE(!e);
    CHECK(e.error().param == "tokens");
  }
}

TEST_CASE("openai: chat chunks: the role first, content deltas, finish_reason last") {
  const ResponseMeta meta{Endpoint::chat, "chatcmpl-1", 1700000000, "m"};
  ChoiceOut first;
  first.role = true;
  json j = json::parse(format_chunk(meta, first));
  CHECK(j["id"] == "chatcmpl-1");
  CHECK(j["object"] == "chat.completion.chunk");
  CHECK(j["created"] == 1700000000);
  CHECK(j["model"] == "m");
  CHECK(j["choices"][0]["index"] == 0);
  CHECK(j["choices"][0]["delta"] == json{{"role", "assistant"}, {"content", ""}});
  CHECK(j["choices"][0]["logprobs"].is_null());
  CHECK(j["choices"][0]["finish_reason"].is_null());
  CHECK(!j.contains("usage"));

  ChoiceOut piece;
  piece.index = 1;
  piece.text = "Par";
  j = json::parse(format_chunk(meta, piece));
  CHECK(j["choices"][0]["index"] == 1);
  CHECK(j["choices"][0]["delta"] == json{{"content", "Par"}});

  ChoiceOut last;
  last.finish = FinishReason::length;
  j = json::parse(format_chunk(meta, last));
  CHECK(j["choices"][0]["delta"] == json::object());
  CHECK(j["choices"][0]["finish_reason"] == "length");

  j = json::parse(format_usage_chunk(meta, {37, 8}));
  CHECK(j["choices"] == json::array());
  CHECK(j["usage"] == json{{"prompt_tokens", 37}, {"completion_tokens", 8}, {"total_tokens", 45}});
  CHECK(format_chunk(meta, piece).find('\n') == std::string::npos);  // one SSE data line
}

TEST_CASE("openai: responses: chat and text completion shapes, with and without logprobs") {
  ChoiceOut c;
  c.text = "Paris.";
  c.finish = FinishReason::stop;
  c.with_logprobs = true;
  c.logprobs.push_back({"Paris", -0.25f, {{"Paris", -0.25f}, {"Lyon", -2.0f}}, 0});
  c.logprobs.push_back({"\xe4", -std::numeric_limits<float>::infinity(), {}, 5});  // part of a character, and a token with no mass
  json j = json::parse(format_response({Endpoint::chat, "chatcmpl-x", 1, "m"}, {c}, {10, 2}));
  CHECK(j["object"] == "chat.completion");
  CHECK(j["choices"][0]["message"] == json{{"role", "assistant"}, {"content", "Paris."}});
  CHECK(j["choices"][0]["finish_reason"] == "stop");
  CHECK(j["usage"]["total_tokens"] == 12);
  const json& lp = j["choices"][0]["logprobs"]["content"];
  REQUIRE(lp.size() == 2);
  CHECK(lp[0]["token"] == "Paris");
  CHECK(lp[0]["logprob"].get<double>() == doctest::Approx(-0.25));
  CHECK(lp[0]["bytes"] == json{80, 97, 114, 105, 115});
  CHECK(lp[0]["top_logprobs"][1]["token"] == "Lyon");
  CHECK(lp[1]["token"] == "\xef\xbf\xbd");  // U+FFFD for the half character
  CHECK(lp[1]["bytes"] == json{0xe4});
  CHECK(lp[1]["logprob"].get<double>() < -1000);

  j = json::parse(format_response({Endpoint::completions, "cmpl-x", 1, "m"}, {c}, {10, 2}));
  CHECK(j["object"] == "text_completion");
  CHECK(j["choices"][0]["text"] == "Paris.");
  CHECK(!j["choices"][0].contains("message"));
  const json& legacy = j["choices"][0]["logprobs"];
  CHECK(legacy["tokens"][0] == "Paris");
  CHECK(legacy["token_logprobs"][0].get<double>() == doctest::Approx(-0.25));
  CHECK(legacy["top_logprobs"][0]["Lyon"].get<double>() == doctest::Approx(-2.0));
  CHECK(legacy["text_offset"] == json{0, 5});

  c.with_logprobs = false;
  j = json::parse(format_response({Endpoint::completions, "cmpl-x", 1, "m"}, {c}, {10, 2}));
  CHECK(j["choices"][0]["logprobs"].is_null());
}

TEST_CASE("openai: error bodies and engine errors as HTTP statuses") {
  json j = json::parse(format_error(bad_request("'n' must be ...", "n")));
  CHECK(j == json{{"error", {{"message", "'n' must be ..."}, {"type", "invalid_request_error"}, {"param", "n"},
                             {"code", nullptr}}}});
  j = json::parse(format_error(bad_request("bad")));
  CHECK(j["error"]["param"].is_null());

  ApiError e = api_error({ErrorKind::overloaded, "queue full", 2.2});
  CHECK(e.status == 429);
  CHECK(e.type == "rate_limit_error");
  CHECK(e.retry_after == 3);  // ceil
  CHECK(api_error({ErrorKind::overloaded, "", 0.0}).retry_after == 1);
  e = api_error({ErrorKind::unavailable, "a shard of this replica restarted"});
  CHECK(e.status == 503);
  CHECK(e.type == "service_unavailable");
  CHECK(api_error({ErrorKind::invalid_argument, "the prompt is empty"}).status == 400);
  e = api_error({ErrorKind::internal, "/home/x/secret.cpp:12 went wrong"});
  CHECK(e.status == 500);
  CHECK(e.type == "internal_error");
  CHECK(e.message.find("secret") == std::string::npos);
}

TEST_CASE("openai: models, tokens, health bodies") {
  json j = json::parse(format_models("m", 5));
  CHECK(j == json{{"object", "list"}, {"data", {{{"id", "m"}, {"object", "model"}, {"created", 5}, {"owned_by", "troupe"}}}}});
  CHECK(json::parse(format_model("m", 5)) == j["data"][0]);
  j = json::parse(format_tokens({1, 2}, 8192));
  CHECK(j == json{{"tokens", {1, 2}}, {"count", 2}, {"max_model_len", 8192}});
  CHECK(json::parse(format_detokenized("a\xff"))["prompt"] == "a\xef\xbf\xbd");
  CHECK(json::parse(format_health("loading")) == json{{"status", "loading"}});
  CHECK(json::parse(format_health("degraded", "why")) == json{{"status", "degraded"}, {"detail", "why"}});
}

// ---- Generation: prompts to engine requests, events to chunks (the model's tokenizer; no engine) ----

#include "generation.hpp"
#include "gguf.hpp"
#include "test_util.hpp"

namespace {

// A backend with the default model's tokenizer and a context of `n_ctx`; chat prompts are the messages' contents
// joined (the template itself is tested elsewhere).
std::shared_ptr<Backend> test_backend(int n_ctx) {
  auto file = GgufFile::open(test::model_path());
  REQUIRE(file);
  auto tok = Tokenizer::from_gguf(**file);
  REQUIRE(tok);
  auto b = std::make_shared<Backend>(*tok);
  b->model_id = "m";
  b->n_ctx = n_ctx;
  b->encode_text = [t = *tok](const std::string& text) { return t.encode(text, true, true); };
  b->encode_chat = [t = *tok](const std::vector<ChatMessage>& ms) -> Expected<std::vector<TokenId>> {
    std::string text;
    for (const auto& m : ms) text += m.content;
    return t.encode(text, true, true);
  };
  return b;
}

CompletionRequest completion(const std::string& body) {
  auto r = parse_completion_request(body, kLimits);
  REQUIRE(r);
  return *r;
}

}  // namespace

TEST_CASE("openai: a generation makes one engine request per choice, seeds seed + k, the rest of the context") {
  auto backend = test_backend(64);
  ServerOptions options;
  Generation g(completion(R"({"prompt": ["Once upon a time", "1, 2, 3"], "n": 2, "seed": 10, "stream": true,
                              "logprobs": 3, "stop": ["."]})"),
               *backend, options);
  REQUIRE(!g.prepare());
  auto& rs = g.requests();
  REQUIRE(rs.size() == 4);
  CHECK(g.n_choices() == 4);
  CHECK(rs[0].prompt == rs[1].prompt);
  CHECK(rs[0].prompt != rs[2].prompt);
  CHECK(rs[0].params.sampling.seed == 10);
  CHECK(rs[1].params.sampling.seed == 11);
  CHECK(rs[2].params.sampling.seed == 10);
  CHECK(rs[0].params.max_tokens == 64 - static_cast<int>(rs[0].prompt.size()));
  CHECK(rs[0].credit == options.stream_credit);
  CHECK(rs[0].logprobs == 3);
  CHECK(rs[3].params.stop == std::vector<std::string>{"."});
  CHECK(g.meta().id.rfind("cmpl-", 0) == 0);
}

TEST_CASE("openai: a prompt that does not fit the context is a 400 naming the field") {
  auto backend = test_backend(8);
  ServerOptions options;
  Generation fits(completion(R"({"prompt": "Hi", "max_tokens": 2})"), *backend, options);
  CHECK(!fits.prepare());
  CHECK(fits.requests()[0].credit == Request{}.credit);  // not streamed: never paused
  Generation over(completion(R"({"prompt": "Hi", "max_tokens": 9})"), *backend, options);
  auto e = over.prepare();
  REQUIRE(e);
  CHECK(e->status == 400);
  CHECK(e->param == "max_tokens");
  Generation full(completion(R"({"prompt": "one two three four five six seven eight nine ten"})"), *backend, options);
  e = full.prepare();
  REQUIRE(e);
  CHECK(e->param == "prompt");
  auto chat = parse_chat_request(R"({"messages": [{"role": "user", "content": "one two three four five six seven eight"}],
                                     "max_completion_tokens": 1})", kLimits);
  REQUIRE(chat);
  Generation c(*chat, *backend, options);
  e = c.prepare();
  REQUIRE(e);
  CHECK(e->param == "messages");
  Generation empty(completion(R"({"prompt": ""})"), *backend, options);
  e = empty.prepare();
  REQUIRE(e);
  CHECK(e->param == "prompt");
}

TEST_CASE("openai: a streamed chat: role chunks, deltas, the held-back text with finish_reason, usage, [DONE]") {
  auto backend = test_backend(8192);
  ServerOptions options;
  auto req = parse_chat_request(chat_with(R"("n": 2, "stream": true, "stream_options": {"include_usage": true})"), kLimits);
  REQUIRE(req);
  Generation g(*req, *backend, options);
  REQUIRE(!g.prepare());
  const std::string start = g.stream_start();
  CHECK(start.rfind("data: {", 0) == 0);
  CHECK(start.find(R"("delta":{"role":"assistant","content":""})") != std::string::npos);
  CHECK(start.find(R"("index":1)") != std::string::npos);
  TokenEvent t;
  t.token = 42;
  t.text = "Par";
  const std::string piece = g.on_token(0, t);
  CHECK(piece.find(R"("delta":{"content":"Par"})") != std::string::npos);
  CHECK(piece.substr(piece.size() - 2) == "\n\n");
  t.text.clear();
  CHECK(g.on_token(0, t).empty());  // nothing to say: no chunk
  FinishEvent f{FinishReason::stop, 5, 3, "is", 0.0};
  const std::string end0 = g.on_finished(0, f);
  CHECK(end0.find(R"("delta":{"content":"is"},"logprobs":null,"finish_reason":"stop")") != std::string::npos);
  CHECK(!g.finished());
  CHECK(g.on_finished(0, f).empty());  // a second finish for a choice is ignored
  g.on_finished(1, {FinishReason::length, 5, 4, "", 0.0});
  CHECK(g.finished());
  const std::string tail = g.stream_end();
  CHECK(tail.find(R"("choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12})") !=
        std::string::npos);
  CHECK(tail.substr(tail.size() - 14) == "data: [DONE]\n\n");
}

TEST_CASE("openai: a gathered completion with logprobs: text, entries with offsets, usage") {
  auto backend = test_backend(8192);
  ServerOptions options;
  Generation g(completion(R"({"prompt": "Hi", "logprobs": 1})"), *backend, options);
  REQUIRE(!g.prepare());
  const TokenId hello = backend->tokenizer.encode("Hello", false, false).at(0);
  TokenEvent t;
  t.token = hello;
  t.text = backend->tokenizer.token_to_piece(hello);
  t.logprob = -0.5f;
  t.top = {{hello, -0.5f}};
  CHECK(g.on_token(0, t).empty());
  CHECK(g.on_token(0, t).empty());
  g.on_finished(0, {FinishReason::length, 1, 2, "", 0.0});
  json j = json::parse(g.response_body());
  CHECK(j["object"] == "text_completion");
  CHECK(j["choices"][0]["text"] == t.text + t.text);
  CHECK(j["choices"][0]["finish_reason"] == "length");
  CHECK(j["choices"][0]["logprobs"]["tokens"] == json{t.text, t.text});
  CHECK(j["choices"][0]["logprobs"]["text_offset"] == json{0, t.text.size()});
  CHECK(j["choices"][0]["logprobs"]["top_logprobs"][0][t.text].get<double>() == doctest::Approx(-0.5));
  CHECK(j["usage"] == json{{"prompt_tokens", 1}, {"completion_tokens", 2}, {"total_tokens", 3}});
}

// ---- routes (routes.hpp): decided without sockets; a backend without an engine serves the routes that need none ----

#include "routes.hpp"

namespace {

Action get(ServerState& state, const std::string& method, const std::string& target) {
  return route(HttpRequest{method, target, "", "", "", ""}, state);
}

std::string header_of(const HttpResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (k == name) return v;
  }
  return "";
}

}  // namespace

TEST_CASE("openai: GET /v1/models/{id}: the model object; another id is 404 model_not_found") {
  ServerState state{ServerOptions{}};
  auto backend = test_backend(64);
  backend->model_id = "org/tiny:q4 x";
  backend->created = 7;
  CHECK(get(state, "GET", "/v1/models/x").response.status == 503);  // loading
  state.backend.store(backend.get());
  Action a = get(state, "GET", "/v1/models/org%2Ftiny%3Aq4%20x");  // as the openai client escapes it
  CHECK(a.response.status == 200);
  CHECK(json::parse(a.response.body) ==
        json{{"id", "org/tiny:q4 x"}, {"object", "model"}, {"created", 7}, {"owned_by", "troupe"}});
  CHECK(get(state, "GET", "/v1/models/org/tiny:q4 x").response.status == 200);  // unescaped
  for (const char* target : {"/v1/models/gpt-4o", "/v1/models/org%2Ftiny", "/v1/models/%zz", "/v1/models/%2"}) {
    CAPTURE(target);
    a = get(state, "GET", target);
    CHECK(a.response.status == 404);
    const json e = json::parse(a.response.body)["error"];
    CHECK(e["type"] == "not_found_error");
    CHECK(e["code"] == "model_not_found");
    CHECK(e["message"].get<std::string>().find("gpt-4o") == std::string::npos);  // the request is not quoted
  }
  CHECK(json::parse(get(state, "GET", "/v1/models/").response.body)["error"]["code"] == "not_found");
  a = get(state, "POST", "/v1/models/org%2Ftiny%3Aq4%20x");
  CHECK(a.response.status == 405);
  CHECK(header_of(a.response, "Allow") == "GET, HEAD, OPTIONS");
}

TEST_CASE("openai: HEAD is taken by every GET route (the session drops the body) and refused on POST routes") {
  ServerOptions options;
  options.api_key = "k";
  ServerState state{options};
  auto backend = test_backend(64);
  backend->model_id = "m";
  state.backend.store(backend.get());
  auto head = [&](const std::string& target, const std::string& auth = "Bearer k") {
    return route(HttpRequest{"HEAD", target, "", auth, "", ""}, state);
  };
  CHECK(head("/health", "").response.status == 200);
  CHECK(head("/v1/models").response.status == 200);
  CHECK(head("/v1/models").response.body ==
        route(HttpRequest{"GET", "/v1/models", "", "Bearer k", "", ""}, state).response.body);
  CHECK(head("/v1/models/m").response.status == 200);
  CHECK(head("/v1/models/n").response.status == 404);
  CHECK(head("/v1/models", "").response.status == 401);
  CHECK(head("/metrics").work);  // computed off the io threads, as for GET
  for (const char* post : {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}) {
    CAPTURE(post);
    Action a = head(post);
    CHECK(a.response.status == 405);
    CHECK(header_of(a.response, "Allow") == "POST, OPTIONS");
  }
  CHECK(head("/nothing").response.status == 404);
  Action o = route(HttpRequest{"OPTIONS", "/metrics", "", "", "", ""}, state);
  CHECK(o.response.status == 204);
  CHECK(header_of(o.response, "Allow") == "GET, HEAD, OPTIONS");
}

// ---- the /metrics page (metrics.hpp) ----

#include "metrics.hpp"

TEST_CASE("openai: /metrics: per-shard mailbox depth gauges and step time histograms labelled replica, stage, group") {
  EngineStats stats;
  ShardStats a{0, 0, 0, 3, 0, 0.0125, std::vector<uint64_t>(kShardStepBounds.size() + 1, 0)};
  a.step_buckets[1] = 2;                          // two steps of 0.5-1 ms
  a.step_buckets.back() = 1;                      // one over the last bound
  a.steps = 3;
  ShardStats b{1, 2, 1, 0, 0, 0, std::vector<uint64_t>(kShardStepBounds.size() + 1, 0)};
  stats.shards = {a, b};
  const std::string text = Metrics().render(stats);
  auto has = [&](const std::string& line) {
    INFO(line);
    CHECK(text.find("\n" + line + "\n") != std::string::npos);
  };
  has("# TYPE troupe_shard_mailbox_depth gauge");
  has(R"(troupe_shard_mailbox_depth{replica="0",stage="0",group="0"} 3)");
  has(R"(troupe_shard_mailbox_depth{replica="1",stage="2",group="1"} 0)");
  has("# TYPE troupe_shard_step_seconds histogram");
  has(R"(troupe_shard_step_seconds_bucket{replica="0",stage="0",group="0",le="0.0005"} 0)");
  has(R"(troupe_shard_step_seconds_bucket{replica="0",stage="0",group="0",le="0.001"} 2)");
  has(R"(troupe_shard_step_seconds_bucket{replica="0",stage="0",group="0",le="10"} 2)");
  has(R"(troupe_shard_step_seconds_bucket{replica="0",stage="0",group="0",le="+Inf"} 3)");
  has(R"(troupe_shard_step_seconds_sum{replica="0",stage="0",group="0"} 0.0125)");
  has(R"(troupe_shard_step_seconds_count{replica="0",stage="0",group="0"} 3)");
  has(R"(troupe_shard_step_seconds_count{replica="1",stage="2",group="1"} 0)");
  // the unlabelled histograms keep their shape
  has(R"(troupe_time_to_first_token_seconds_bucket{le="+Inf"} 0)");
  has("troupe_time_to_first_token_seconds_count 0");
}
