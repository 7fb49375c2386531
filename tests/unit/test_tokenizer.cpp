// Tokenizer tests: every golden case from llama.cpp (tests/golden/tokenizer.json) on the real default model, plus
// streaming, round trips, special-token parsing, hostile inputs and malformed vocabularies.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "gguf.hpp"
#include "test_util.hpp"
#include "tokenizer.hpp"

using namespace troupe;
using json = nlohmann::json;

namespace {

const Tokenizer& real_tokenizer() {
  static const Tokenizer tok = [] {
    auto file = GgufFile::open(test::model_path());
    REQUIRE_MESSAGE(file.has_value(), "default model missing: run scripts/fetch-model.sh");
    auto t = Tokenizer::from_gguf(**file);
    REQUIRE_MESSAGE(t.has_value(), (t.has_value() ? "" : t.error().message));
    return *t;
  }();
  return tok;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string to_hex(const std::string& s) {
  std::string out;
  char buf[3];
  for (const char c : s) {
    std::snprintf(buf, sizeof buf, "%02x", static_cast<uint8_t>(c));
    out += buf;
  }
  return out;
}

std::string ids_str(const std::vector<TokenId>& ids) {
  std::string s;
  for (const TokenId id : ids) s += std::to_string(id) + " ";
  return s;
}

const json& golden() {
  static const json g = json::parse(test::read_text(test::source_path("tests/golden/tokenizer.json")));
  return g;
}

}  // namespace

TEST_CASE("tokenizer: real model vocabulary") {
  const Tokenizer& tok = real_tokenizer();
  CHECK(tok.n_vocab() == golden()["vocab"]["n_vocab"].get<int>());
  CHECK(tok.bos() == golden()["vocab"]["bos"].get<int>());
  CHECK(tok.eos() == golden()["vocab"]["eos"].get<int>());
  CHECK(tok.pre_tokenizer() == "smollm");
  CHECK(tok.token_text(tok.eos()) == "<|im_end|>");
  CHECK(tok.is_eog(tok.eos()));
  CHECK(tok.is_eog(0));  // <|endoftext|>
  CHECK_FALSE(tok.is_eog(1));  // <|im_start|>
  CHECK_FALSE(tok.is_eog(100));
  CHECK_FALSE(tok.is_eog(-1));
  CHECK_FALSE(tok.is_eog(tok.n_vocab()));
  CHECK(tok.token_text(-5).empty());
  CHECK(tok.token_to_piece(tok.n_vocab()).empty());
  // control tokens render only on request
  CHECK(tok.token_to_piece(tok.eos()).empty());
  CHECK(tok.token_to_piece(tok.eos(), true) == "<|im_end|>");
}

TEST_CASE("tokenizer: every golden case matches llama.cpp") {
  const Tokenizer& tok = real_tokenizer();
  int n = 0, failed = 0;
  for (const auto& c : golden()["cases"]) {
    const std::string text = from_hex(c["text_hex"].get<std::string>());
    const auto expected = c["ids"].get<std::vector<TokenId>>();
    const auto got = tok.encode(text, false, c["parse_special"].get<bool>());
    ++n;
    if (got != expected) {
      ++failed;
      INFO("case " << c["name"].get<std::string>() << " parse_special=" << c["parse_special"].get<bool>());
      INFO("expected " << ids_str(expected));
      INFO("got      " << ids_str(got));
      CHECK(got == expected);
    }
  }
  MESSAGE(n << " golden encode cases, " << failed << " failed");
  CHECK(n >= 400);
  CHECK(failed == 0);
}

TEST_CASE("tokenizer: every golden detokenize case matches llama.cpp") {
  const Tokenizer& tok = real_tokenizer();
  int n = 0;
  for (const auto& c : golden()["detokenize"]) {
    const auto ids = c["ids"].get<std::vector<TokenId>>();
    const std::string got = tok.decode(ids, c["special"].get<bool>());
    INFO("case " << c.value("name", std::string("?")) << " special=" << c["special"].get<bool>());
    CHECK(to_hex(got) == c["text_hex"].get<std::string>());
    ++n;
  }
  CHECK(n >= 40);
}

TEST_CASE("tokenizer: decode(encode(s)) == s for valid UTF-8") {
  const Tokenizer& tok = real_tokenizer();
  const auto& not_round_trip = golden()["notes"]["cases_that_do_not_round_trip"];
  int n = 0;
  for (const auto& c : golden()["cases"]) {
    if (c["parse_special"].get<bool>()) continue;
    const std::string name = c["name"].get<std::string>();
    if (std::find(not_round_trip.begin(), not_round_trip.end(), name) != not_round_trip.end()) continue;
    const std::string text = from_hex(c["text_hex"].get<std::string>());
    INFO("case " << name);
    CHECK(tok.decode(tok.encode(text, false, false)) == text);
    ++n;
  }
  CHECK(n > 300);
  // random valid UTF-8 from assorted scripts and symbols
  std::mt19937 rng(42);
  const uint32_t pool[] = {'a', 'Z', ' ', '\n', '\t', '1', '\'', '!', 0xE9, 0x3A9, 0x416, 0x5D0, 0x627, 0x915, 0xE01,
                           0x4E2D, 0x3042, 0xAC00, 0x1F600, 0x1F44D, 0x200D, 0xFE0F, 0x2028, 0xA0, 0x3000, 0x10FFFF,
                           0xFFFD, 0x0, 0x7F, 0x85};
  for (int round = 0; round < 200; ++round) {
    std::string s;
    const int len = static_cast<int>(rng() % 40);
    for (int i = 0; i < len; ++i) {
      const uint32_t cp = pool[rng() % (sizeof pool / sizeof pool[0])];
      std::vector<TokenId> dummy;
      // encode cp as UTF-8
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else if (cp < 0x10000) {
        s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else {
        s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
    INFO("text " << to_hex(s));
    CHECK(tok.decode(tok.encode(s, false, false)) == s);
  }
}

TEST_CASE("tokenizer: special tokens are parsed only when asked") {
  const Tokenizer& tok = real_tokenizer();
  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const auto parsed = tok.encode(text, false, true);
  REQUIRE(parsed.size() >= 3);
  CHECK(parsed.front() == 1);
  CHECK(parsed.back() == tok.eos());
  const auto plain = tok.encode(text, false, false);
  CHECK(std::find(plain.begin(), plain.end(), 1) == plain.end());
  CHECK(std::find(plain.begin(), plain.end(), tok.eos()) == plain.end());
  CHECK(tok.decode(plain) == text);
  CHECK(tok.decode(parsed, true) == text);
  CHECK(tok.decode(parsed, false) == "user\nhi");
  // glued to words and partial
  const auto glued = tok.encode("a<|endoftext|>b", false, true);
  CHECK(std::find(glued.begin(), glued.end(), 0) != glued.end());
  const auto partial = tok.encode("<|im_sta", false, true);
  CHECK(tok.decode(partial) == "<|im_sta");
  // add_special follows the file (SmolLM2 adds neither BOS nor EOS)
  CHECK(tok.encode("hi", true, false) == tok.encode("hi", false, false));
}

TEST_CASE("tokenizer: incremental decoding never splits a character") {
  const Tokenizer& tok = real_tokenizer();
  SUBCASE("emoji split across byte tokens") {
    const std::string grin = "\xF0\x9F\x98\x80";  // U+1F600, three tokens in this vocabulary
    const auto ids = tok.encode(grin, false, false);
    REQUIRE(ids.size() >= 2);
    IncrementalDecoder dec(tok);
    std::string out;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const std::string part = dec.push(ids[i]);
      CHECK(part.empty());  // nothing until the character is complete
      out += part;
    }
    out += dec.push(ids.back());
    CHECK(out == grin);
    CHECK(dec.flush().empty());
  }
  SUBCASE("multi-byte text streams to the same bytes") {
    const std::string text = "Grüße, 世界! 👨‍👩‍👧 ok";
    IncrementalDecoder dec(tok);
    std::string out;
    for (const TokenId id : tok.encode(text, false, false)) out += dec.push(id);
    out += dec.flush();
    CHECK(out == text);
  }
  SUBCASE("an incomplete character at the end becomes U+FFFD") {
    const auto ids = tok.encode("\xF0\x9F\x98\x80", false, false);
    IncrementalDecoder dec(tok);
    CHECK(dec.push(ids[0]).empty());
    CHECK(dec.flush() == "\xEF\xBF\xBD");
  }
  SUBCASE("invalid bytes become U+FFFD and the output stays valid") {
    // byte-level tokens for a lone continuation byte and for 0xFF
    const auto cont = tok.encode("\xC3\xA9", false, false);  // é: one token
    IncrementalDecoder dec(tok);
    // find the single-byte token for 0x80 by its byte-level text (U+0100 + ...): encode via a piece
    TokenId byte80 = -1, byteC3 = -1;  // single-byte tokens: a lone continuation byte, a lead byte
    for (TokenId id = 0; id < tok.n_vocab() && (byte80 < 0 || byteC3 < 0); ++id) {
      const std::string p = tok.token_to_piece(id);
      if (p == "\x80") byte80 = id;
      if (p == "\xC3") byteC3 = id;
    }
    REQUIRE(byte80 >= 0);
    REQUIRE(byteC3 >= 0);
    const TokenId a = tok.encode("a", false, false).at(0);
    CHECK(dec.push(byte80) == "\xEF\xBF\xBD");             // can never start a character
    CHECK(dec.push(byteC3).empty());                        // may still become one
    CHECK(dec.push(a) == "\xEF\xBF\xBD" "a");               // ... but did not
    CHECK(dec.push(cont[0]) == "\xC3\xA9");
    CHECK(dec.flush().empty());
  }
  SUBCASE("control tokens stream nothing") {
    IncrementalDecoder dec(tok);
    CHECK(dec.push(tok.eos()).empty());
    CHECK(dec.push(-1).empty());
  }
}

TEST_CASE("tokenizer: inputs that abort llama.cpp are handled") {
  const Tokenizer& tok = real_tokenizer();
  const TokenId fffd = 24211;  // U+FFFD in this vocabulary
  for (const auto& c : golden()["notes"]["inputs_that_abort_llama_cpp"]) {
    const std::string text = from_hex(c["text_hex"].get<std::string>());
    const auto ids = tok.encode(text, false, false);
    INFO("case " << c["name"].get<std::string>());
    // every byte is invalid (no sequence above U+10FFFF exists): one U+FFFD each
    CHECK(ids == std::vector<TokenId>(text.size(), fffd));
  }
  // embedded in text, and the same for overlong 4-byte forms above the limit in a word
  const auto ids = tok.encode(std::string("ab\xF4\x90\x80\x80" "cd"), false, false);
  CHECK(std::count(ids.begin(), ids.end(), fffd) == 4);
}

TEST_CASE("tokenizer: hostile inputs do not crash and long words are fast") {
  const Tokenizer& tok = real_tokenizer();
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::string s(rng() % 64, '\0');
    for (auto& ch : s) ch = static_cast<char>(rng() & 0xFF);
    if (round % 3 == 0) s.insert(rng() % (s.size() + 1), "<|im_end|>");
    const auto ids = tok.encode(s, true, round % 2 == 0);
    for (const TokenId id : ids) REQUIRE((id >= 0 && id < tok.n_vocab()));
    (void)tok.decode(ids, round % 2 == 0);
    IncrementalDecoder dec(tok);
    for (const TokenId id : ids) (void)dec.push(id);
    (void)dec.flush();
  }
  CHECK(tok.encode(std::string(), true, true).empty());
  CHECK(tok.encode(std::string(5, '\0'), false, false).size() >= 1);

  // one word of a million letters, a million spaces, a million digits
  for (const char c : {'a', ' ', '7'}) {
    const std::string big(1 << 20, c);
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(big, false, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MESSAGE("1 MiB of '" << c << "': " << ids.size() << " tokens in " << s << " s");
    CHECK(tok.decode(ids) == big);
  }
}

namespace {

// A minimal GGUF (v3) holding only tokenizer metadata, for the malformed-vocabulary tests.
struct MiniGguf {
  std::vector<uint8_t> bytes;
  uint64_t n_kv = 0;
  void u32(uint32_t v) { for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<uint8_t>(v >> (8 * i))); }
  void u64(uint64_t v) { for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<uint8_t>(v >> (8 * i))); }
  void str(const std::string& s) { u64(s.size()); bytes.insert(bytes.end(), s.begin(), s.end()); }
  void kv_string(const std::string& k, const std::string& v) { str(k); u32(8); str(v); ++n_kv; }
  void kv_u32(const std::string& k, uint32_t v) { str(k); u32(4); u32(v); ++n_kv; }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    str(k); u32(9); u32(8); u64(v.size());
    for (const auto& s : v) str(s);
    ++n_kv;
  }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) {
    str(k); u32(9); u32(5); u64(v.size());
    for (const int32_t x : v) u32(static_cast<uint32_t>(x));
    ++n_kv;
  }
  std::vector<uint8_t> finish() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F', 3, 0, 0, 0};
    for (int i = 0; i < 8; ++i) out.push_back(0);  // no tensors
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n_kv >> (8 * i)));
    out.insert(out.end(), bytes.begin(), bytes.end());
    return out;
  }
};

// A tiny vocabulary: every byte-level character, then "ab" and "abc" via merges, plus two control tokens.
MiniGguf tiny_vocab(const std::string& pre = "gpt-2", size_t drop_types = 0) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = static_cast<uint32_t>(b);
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    static uint32_t next = 256;
    if (b == 0) next = 256;
    if (!printable) cp = next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    tokens.push_back(s);
  }
  tokens.push_back("ab");
  tokens.push_back("abc");
  tokens.push_back("<|end|>");
  tokens.push_back("<|e|>");
  std::vector<int32_t> types(tokens.size(), 1);
  types[types.size() - 1] = 3;
  types[types.size() - 2] = 3;
  types.resize(types.size() - drop_types);
  MiniGguf g;
  g.kv_string("tokenizer.ggml.model", "gpt2");
  g.kv_string("tokenizer.ggml.pre", pre);
  g.kv_strings("tokenizer.ggml.tokens", tokens);
  g.kv_i32s("tokenizer.ggml.token_type", types);
  g.kv_strings("tokenizer.ggml.merges", {"a b", "ab c", "nospace", " x", "zz z z"});
  return g;
}

Expected<Tokenizer> load(const MiniGguf& g) {
  auto file = GgufFile::parse(g.finish());
  REQUIRE_MESSAGE(file.has_value(), (file.has_value() ? "" : file.error().message));
  return Tokenizer::from_gguf(**file);
}

}  // namespace

TEST_CASE("tokenizer: a small synthetic vocabulary") {
  auto g = tiny_vocab();
  g.kv_u32("tokenizer.ggml.eos_token_id", 258);
  auto tok = load(g);
  REQUIRE_MESSAGE(tok.has_value(), (tok.has_value() ? "" : tok.error().message));
  CHECK(tok->n_vocab() == 260);
  CHECK(tok->encode("abc", false, false) == std::vector<TokenId>{257});
  CHECK(tok->encode("ab", false, false) == std::vector<TokenId>{256});
  CHECK(tok->encode("abab", false, false) == std::vector<TokenId>{256, 256});
  CHECK(tok->encode("x<|end|>", false, true) == std::vector<TokenId>{'x', 258});
  CHECK(tok->is_eog(258));
  CHECK(tok->bos() == 11);  // llama.cpp's default for gpt2 vocabularies
  // gpt-2 vocabularies clean spaces on detokenize, as llama.cpp does
  CHECK(tok->decode(tok->encode("a , b", false, false)) == "a, b");
}

TEST_CASE("tokenizer: malformed vocabularies are refused with a reason") {
  SUBCASE("unknown pre-tokenizer") {
    auto tok = load(tiny_vocab("mystery-pre"));
    REQUIRE_FALSE(tok.has_value());
    CHECK(tok.error().kind == ErrorKind::invalid_model);
    CHECK(tok.error().message.find("mystery-pre") != std::string::npos);
  }
  SUBCASE("type count differs from token count") {
    auto tok = load(tiny_vocab("gpt-2", 1));
    REQUIRE_FALSE(tok.has_value());
    CHECK(tok.error().message.find("token_type") != std::string::npos);
  }
  SUBCASE("special id out of range") {
    auto g = tiny_vocab();
    g.kv_u32("tokenizer.ggml.bos_token_id", 100000);
    auto tok = load(g);
    REQUIRE_FALSE(tok.has_value());
    CHECK(tok.error().message.find("bos_token_id") != std::string::npos);
  }
  SUBCASE("not a BPE vocabulary") {
    MiniGguf g;
    g.kv_string("tokenizer.ggml.model", "llama");
    g.kv_strings("tokenizer.ggml.tokens", {"a"});
    auto tok = load(g);
    REQUIRE_FALSE(tok.has_value());
    CHECK(tok.error().message.find("llama") != std::string::npos);
  }
  SUBCASE("missing merges") {
    MiniGguf g;
    g.kv_string("tokenizer.ggml.model", "gpt2");
    g.kv_strings("tokenizer.ggml.tokens", {"a", "b"});
    CHECK_FALSE(load(g).has_value());
  }
  SUBCASE("duplicate token text") {
    MiniGguf g;
    g.kv_string("tokenizer.ggml.model", "gpt2");
    g.kv_strings("tokenizer.ggml.tokens", {"a", "b", "a"});
    g.kv_strings("tokenizer.ggml.merges", {});
    CHECK_FALSE(load(g).has_value());
  }
}

TEST_CASE("tokenizer: Unicode 15 code points are classed as llama.cpp's tables class them") {
  // Kawi digits U+11F50/51 (numbers) and Nag Mundari letters U+1E4D0/D1, which PCRE2 10.42 (Unicode 14) does not
  // know; ids from llama.cpp (llama-cpp-python 0.3.36). A sweep of every code point agreed after the fix.
  const Tokenizer& tok = real_tokenizer();
  const std::string text = from_hex("61f091bd90f091bd912062f09e9390f09e939120f091bd9078");
  const std::vector<TokenId> expected = {81,  187, 235, 138, 234, 187, 235, 138, 235, 278, 187, 248,
                                         237, 234, 187, 248, 237, 235, 216, 187, 235, 138, 234, 104};
  CHECK(tok.encode(text, false, false) == expected);
}

TEST_CASE("tokenizer: end-of-generation tokens are llama.cpp's") {
  // llama_vocab_is_eog over the whole vocabulary (llama-cpp-python 0.3.36): <|endoftext|>, <|im_end|> and
  // <reponame>, which llama.cpp takes for the fill-in-the-middle repository token.
  const Tokenizer& tok = real_tokenizer();
  std::vector<TokenId> eog;
  for (TokenId id = 0; id < tok.n_vocab(); ++id) {
    if (tok.is_eog(id)) eog.push_back(id);
  }
  CHECK(eog == std::vector<TokenId>{0, 2, 4});
}

TEST_CASE("tokenizer: fill-in-the-middle tokens are found by text or metadata as llama.cpp finds them") {
  MiniGguf g;
  g.kv_string("tokenizer.ggml.model", "gpt2");
  g.kv_string("tokenizer.ggml.pre", "smollm");
  g.kv_strings("tokenizer.ggml.tokens", {"a", "b", "<|fim_pad|>", "<fim_prefix>", "x"});
  g.kv_i32s("tokenizer.ggml.token_type", {1, 1, 1, 1, 1});  // all normal: text detection makes FIM tokens control
  g.kv_strings("tokenizer.ggml.merges", {});
  g.kv_u32("tokenizer.ggml.fim_sep_token_id", 4);
  auto tok = load(g);
  REQUIRE_MESSAGE(tok.has_value(), (tok.has_value() ? "" : tok.error().message));
  CHECK(tok->is_eog(2));        // pad ends generation
  CHECK_FALSE(tok->is_eog(3));  // prefix does not ...
  CHECK(tok->token_to_piece(3).empty());  // ... but is control now
  CHECK(tok->token_to_piece(3, true) == "<fim_prefix>");
  CHECK(tok->encode("a<fim_prefix>b", false, true) == std::vector<TokenId>{0, 3, 1});
  CHECK(tok->is_eog(4));                  // named by metadata: ends generation ...
  CHECK(tok->token_to_piece(4) == "x");  // ... and keeps its type
}

namespace {

// The 256 byte-level characters of GPT-2's mapping, as a vocabulary's first 256 tokens.
std::vector<std::string> byte_level_tokens() {
  std::vector<std::string> tokens;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    tokens.push_back(s);
  }
  return tokens;
}

// Byte-level characters, then "ab" (merge "a b"), "abc" (no merge reaches it), "12" (merge "1 2") and a BOS.
Expected<Tokenizer> pre_vocab(const std::string& pre) {
  std::vector<std::string> tokens = byte_level_tokens();
  tokens.insert(tokens.end(), {"ab", "abc", "12", "<|begin_of_text|>"});
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  MiniGguf g;
  g.kv_string("tokenizer.ggml.model", "gpt2");
  g.kv_string("tokenizer.ggml.pre", pre);
  g.kv_strings("tokenizer.ggml.tokens", tokens);
  g.kv_i32s("tokenizer.ggml.token_type", types);
  g.kv_strings("tokenizer.ggml.merges", {"a b", "1 2"});
  g.kv_u32("tokenizer.ggml.bos_token_id", 259);
  return load(g);
}

}  // namespace

TEST_CASE("tokenizer: llama3 and qwen2 pre-tokenizers carry llama.cpp's flags") {
  // Checked beyond these cases against llama.cpp's own vocabulary files (models/ggml-vocab-{gpt-2,gpt-neox,
  // llama-bpe,qwen2,starcoder,refact,command-r,mpt}.gguf in its source tree): ~1600 strings each, ids, detokenized
  // bytes and end-of-generation sets all equal.
  auto gpt2 = pre_vocab("gpt-2");
  auto llama3 = pre_vocab("llama-bpe");
  auto qwen2 = pre_vocab("qwen2");
  REQUIRE(gpt2.has_value());
  REQUIRE(llama3.has_value());
  REQUIRE(qwen2.has_value());
  // llama3 takes a piece that is a token whole (ignore_merges); the others merge
  CHECK(gpt2->encode("abc", false, false) == std::vector<TokenId>{256, 'c'});
  CHECK(llama3->encode("abc", false, false) == std::vector<TokenId>{257});
  CHECK(qwen2->encode("abc", false, false) == std::vector<TokenId>{256, 'c'});
  // llama3 adds BOS unless the file says otherwise
  CHECK(llama3->encode("ab", true, false) == std::vector<TokenId>{259, 256});
  CHECK(gpt2->encode("ab", true, false) == std::vector<TokenId>{256});
  // digits: runs of up to three for llama3 (so "12" merges), one at a time for qwen2
  CHECK(llama3->encode("1212", false, false) == std::vector<TokenId>{258, '1', '2'});
  CHECK(qwen2->encode("1212", false, false) == std::vector<TokenId>{'1', '2', '1', '2'});
  CHECK(gpt2->encode("1212", false, false) == std::vector<TokenId>{258, 258});
}
