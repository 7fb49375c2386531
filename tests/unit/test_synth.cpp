// Synthetic models (src/synth.hpp): small models of every weight type written to disk and opened with the real
// loader (the config is the spec, the vocabulary tokenizes), the same seed giving the same bytes, the forward pass
// giving finite logits with a spread and greedy margins that are not tiny, and impossible shapes refused.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "load.hpp"
#include "synth.hpp"

using namespace troupe;

namespace {

// A directory removed with its contents at the end of the test.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/troupe-synth-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return path + "/" + name; }
};

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A shape small enough to write and run in milliseconds, with grouped-query attention and n_ff != n_embd.
SynthSpec small_spec(GgmlType type) {
  SynthSpec s;
  s.name = "test";
  s.n_vocab = 700;
  s.n_embd = 128;
  s.n_layer = 3;
  s.n_head = 4;
  s.n_head_kv = 2;
  s.n_ff = 320;
  s.n_ctx = 256;
  s.rope_theta = 10000.0f;
  s.rms_eps = 1e-6f;
  s.weight_type = type;
  return s;
}

LoadedModel write_and_load(const SynthSpec& spec, const std::string& path) {
  auto ok = write_synth_gguf(spec, path);
  REQUIRE_MESSAGE(ok.has_value(), ok.error().message);
  auto loaded = load_model(path);
  REQUIRE_MESSAGE(loaded.has_value(), loaded.error().message);
  return std::move(*loaded);
}

struct Margins {
  std::vector<double> top1;  // top-1 minus top-2 logit, per step
  bool finite = true;
  double min_sd = 1e30;      // smallest standard deviation of a step's logits
};

// Greedy decoding of n tokens after the prompt, recording each step's logits' statistics.
Margins greedy_margins(const LoadedModel& m, const std::string& prompt, int n) {
  const int n_vocab = m.model->config().n_vocab;
  std::vector<TokenId> ids = m.tokenizer.encode(prompt, true, false);
  REQUIRE(!ids.empty());
  Forward fw(m.model, static_cast<int>(ids.size()));
  KvCache cache = fw.make_cache(static_cast<int>(ids.size()) + n);
  auto logits = fw.run(ids.data(), static_cast<int>(ids.size()), 0, cache);
  Margins out;
  for (int step = 0; step < n; ++step) {
    REQUIRE(logits.has_value());
    const float* l = *logits;
    double sum = 0, sum2 = 0;
    float best = -INFINITY, second = -INFINITY;
    TokenId arg = 0;
    for (int i = 0; i < n_vocab; ++i) {
      out.finite = out.finite && std::isfinite(l[i]);
      sum += l[i];
      sum2 += static_cast<double>(l[i]) * l[i];
      if (l[i] > best) {
        second = best;
        best = l[i];
        arg = i;
      } else if (l[i] > second) {
        second = l[i];
      }
    }
    const double mean = sum / n_vocab;
    out.min_sd = std::min(out.min_sd, std::sqrt(std::max(0.0, sum2 / n_vocab - mean * mean)));
    out.top1.push_back(best - second);
    logits = fw.run(&arg, 1, static_cast<int>(ids.size()) + step, cache);
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

TEST_CASE("synth: named shapes") {
  const auto names = synth_shape_names();
  REQUIRE(names.size() == 3);
  for (const auto& name : names) {
    auto s = synth_shape(name);
    REQUIRE(s.has_value());
    CAPTURE(name);
    CHECK(check_synth_spec(*s).has_value());
    CHECK(s->weight_type == GgmlType::q4_1);
    CHECK(s->embd_type == GgmlType::q8_0);
  }
  auto smol = *synth_shape("smollm2-135m");  // the default model's shape (troupe inspect)
  CHECK((smol.n_vocab == 49152 && smol.n_embd == 576 && smol.n_layer == 30 && smol.n_head == 9 &&
         smol.n_head_kv == 3 && smol.n_ff == 1536 && smol.n_ctx == 8192 && smol.tied));
  auto b1 = *synth_shape("llama-1b");
  CHECK((b1.n_vocab == 128256 && b1.n_embd == 2048 && b1.n_layer == 16 && b1.n_head == 32 && b1.n_head_kv == 8 &&
         b1.n_ff == 8192 && b1.tied));
  auto b8 = *synth_shape("llama-8b");
  CHECK((b8.n_vocab == 128256 && b8.n_embd == 4096 && b8.n_layer == 32 && b8.n_head == 32 && b8.n_head_kv == 8 &&
         b8.n_ff == 14336 && !b8.tied));
  // an 8B Q4_1 file: the layers at 20 bytes per 32 weights, Q8_0 embedding and output
  CHECK(synth_file_size(b8) > 5'400'000'000ull);
  CHECK(synth_file_size(b8) < 5'600'000'000ull);

  auto unknown = synth_shape("llama-70b");
  REQUIRE(!unknown.has_value());
  CHECK(unknown.error().kind == ErrorKind::invalid_argument);
  CHECK(unknown.error().message.find("smollm2-135m") != std::string::npos);  // lists the known ones
}

TEST_CASE("synth: impossible shapes are refused, naming the problem") {
  struct Case {
    const char* what;
    void (*change)(SynthSpec&);
    const char* fragment;
  };
  const Case cases[] = {
      {"n_embd % n_head", [](SynthSpec& s) { s.n_head = 5; }, "not a multiple of n_head"},
      {"n_head % n_head_kv", [](SynthSpec& s) { s.n_head_kv = 3; }, "not a multiple of n_head_kv"},
      {"more KV heads than heads", [](SynthSpec& s) { s.n_head_kv = 8; }, "n_head_kv"},
      {"odd head size", [](SynthSpec& s) { s.n_embd = 132; s.n_head = 12; }, "odd"},
      {"quantised n_embd", [](SynthSpec& s) { s.n_embd = 136; s.n_head = 4; }, "multiple of 32"},
      {"quantised n_ff", [](SynthSpec& s) { s.n_ff = 300; }, "n_ff 300 is not a multiple of 32"},
      {"quantised embedding", [](SynthSpec& s) { s.weight_type = GgmlType::f16; s.n_embd = 136; s.n_head = 4; },
       "embedding"},
      {"vocabulary too small", [](SynthSpec& s) { s.n_vocab = 258; }, "n_vocab"},
      {"no layers", [](SynthSpec& s) { s.n_layer = 0; }, "n_layer"},
      {"no context", [](SynthSpec& s) { s.n_ctx = 0; }, "n_ctx"},
      {"bf16 weights", [](SynthSpec& s) { s.weight_type = GgmlType::bf16; }, "bf16"},
      {"rope_theta", [](SynthSpec& s) { s.rope_theta = 0.5f; }, "rope_theta"},
      {"rms_eps", [](SynthSpec& s) { s.rms_eps = 0; }, "rms_eps"},
  };
  TempDir dir;
  for (const auto& c : cases) {
    CAPTURE(c.what);
    SynthSpec s = small_spec(GgmlType::q4_1);
    c.change(s);
    auto checked = check_synth_spec(s);
    REQUIRE(!checked.has_value());
    CHECK(checked.error().kind == ErrorKind::invalid_argument);
    CHECK_MESSAGE(checked.error().message.find(c.fragment) != std::string::npos, checked.error().message);
    auto written = write_synth_gguf(s, dir.file("bad.gguf"));
    CHECK(!written.has_value());
    CHECK(!std::filesystem::exists(dir.file("bad.gguf")));
  }
  // f16 layers need no multiple of 32 in n_ff (the embedding stays Q8_0: n_embd must still be one)
  SynthSpec f16 = small_spec(GgmlType::f16);
  f16.n_ff = 300;
  CHECK(check_synth_spec(f16).has_value());
}

TEST_CASE("synth: every weight type loads with the real loader and runs") {
  TempDir dir;
  for (const GgmlType type : {GgmlType::f32, GgmlType::f16, GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0}) {
    const SynthSpec spec = small_spec(type);
    const std::string name = ggml_type_traits(static_cast<uint32_t>(type))->name;
    CAPTURE(name);
    const std::string path = dir.file(name + ".gguf");
    const LoadedModel m = write_and_load(spec, path);
    CHECK(std::filesystem::file_size(path) == synth_file_size(spec));
    CHECK(!std::filesystem::exists(path + ".tmp"));

    // the config is the spec
    const ModelConfig& c = m.model->config();
    CHECK(c.arch == "llama");
    CHECK(c.n_vocab == spec.n_vocab);
    CHECK(c.n_embd == spec.n_embd);
    CHECK(c.n_layer == spec.n_layer);
    CHECK(c.n_head == spec.n_head);
    CHECK(c.n_head_kv == spec.n_head_kv);
    CHECK(c.n_ff == spec.n_ff);
    CHECK(c.n_ctx_train == spec.n_ctx);
    CHECK(c.head_dim == spec.n_embd / spec.n_head);
    CHECK(c.rope_dim == c.head_dim);
    CHECK(c.rope_theta == spec.rope_theta);
    CHECK(c.rms_eps == spec.rms_eps);
    CHECK(m.model->layer(0).wq.type == type);
    CHECK(m.model->layer(spec.n_layer - 1).w_down.type == type);
    CHECK(m.model->token_embd().type == GgmlType::q8_0);
    CHECK(m.file->tensor("output.weight") == nullptr);  // tied
    CHECK(m.model->output().data == m.model->token_embd().data);

    // the vocabulary: BOS/EOS, bytes, and letter strings that merge
    CHECK(m.tokenizer.n_vocab() == spec.n_vocab);
    CHECK(m.tokenizer.bos() == 1);
    CHECK(m.tokenizer.eos() == 2);
    CHECK(m.tokenizer.is_eog(2));
    const std::string text = "hello world, 42 \xc3\xa9t\xc3\xa9!";
    const auto ids = m.tokenizer.encode(text, false, false);
    CHECK(m.tokenizer.decode(ids) == text);
    CHECK(ids.size() < text.size());  // letters merged into longer tokens
    CHECK(m.tokenizer.encode("<|im_start|>user", false, true).front() == 1);

    // the forward pass: finite logits with a spread near the spec's, greedy margins not all tiny
    const Margins g = greedy_margins(m, "the quick brown fox", 16);
    CHECK(g.finite);
    CHECK(g.min_sd > 0.5 * spec.logit_std);
    CHECK(g.min_sd < 2.0 * spec.logit_std);
    CHECK_MESSAGE(median(g.top1) > 0.3, "median top-1 margin " << median(g.top1));
  }
}

TEST_CASE("synth: the same spec and seed give the same bytes, another seed other weights") {
  TempDir dir;
  const SynthSpec spec = small_spec(GgmlType::q4_1);
  REQUIRE(write_synth_gguf(spec, dir.file("a.gguf")).has_value());
  REQUIRE(write_synth_gguf(spec, dir.file("b.gguf")).has_value());
  const auto a = file_bytes(dir.file("a.gguf"));
  CHECK(!a.empty());
  CHECK(a == file_bytes(dir.file("b.gguf")));

  SynthSpec other = spec;
  other.seed = 1;
  REQUIRE(write_synth_gguf(other, dir.file("c.gguf")).has_value());
  const auto c = file_bytes(dir.file("c.gguf"));
  REQUIRE(c.size() == a.size());
  // the metadata differs in the seed only; nearly every weight byte differs
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != c[i];
  CHECK(differ > a.size() / 2);

  // a tensor is drawn from (seed, its name, its row): one more layer leaves the others as they were
  SynthSpec deeper = spec;
  deeper.n_layer = spec.n_layer + 1;
  const LoadedModel m1 = write_and_load(spec, dir.file("d1.gguf"));
  const LoadedModel m2 = write_and_load(deeper, dir.file("d2.gguf"));
  for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.2.ffn_down.weight"}) {
    CAPTURE(name);
    const GgufTensor* t1 = m1.file->tensor(name);
    const GgufTensor* t2 = m2.file->tensor(name);
    REQUIRE((t1 && t2));
    REQUIRE(t1->n_bytes == t2->n_bytes);
    CHECK(std::equal(t1->data, t1->data + t1->n_bytes, t2->data));
  }
  const GgufTensor* q0 = m1.file->tensor("blk.0.attn_q.weight");
  const GgufTensor* q1 = m1.file->tensor("blk.1.attn_q.weight");
  CHECK(!std::equal(q0->data, q0->data + q0->n_bytes, q1->data));
}

TEST_CASE("synth: an untied output, and types of the embedding and output") {
  TempDir dir;
  SynthSpec spec = small_spec(GgmlType::q4_0);
  spec.tied = false;
  spec.embd_type = GgmlType::f16;
  spec.output_type = GgmlType::q4_1;
  const LoadedModel m = write_and_load(spec, dir.file("untied.gguf"));
  const GgufTensor* out = m.file->tensor("output.weight");
  REQUIRE(out != nullptr);
  CHECK(out->type_id == static_cast<uint32_t>(GgmlType::q4_1));
  CHECK(m.model->token_embd().type == GgmlType::f16);
  CHECK(m.model->output().data != m.model->token_embd().data);
  const Margins g = greedy_margins(m, "once upon a time", 8);
  CHECK(g.finite);
  CHECK(g.min_sd > 0.5 * spec.logit_std);
}

TEST_CASE("synth: an unwritable path is an io error and leaves nothing behind") {
  TempDir dir;
  const std::string path = dir.file("missing/model.gguf");
  auto r = write_synth_gguf(small_spec(GgmlType::q8_0), path);
  REQUIRE(!r.has_value());
  CHECK(r.error().kind == ErrorKind::io);
  CHECK(r.error().message.find("missing/model.gguf") != std::string::npos);
  CHECK(std::filesystem::is_empty(dir.path));
}
