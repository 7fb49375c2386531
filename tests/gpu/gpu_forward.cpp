// gpu_forward.cpp: gpu_check's whole-model checks: GPU stages against the CPU forward pass, and the GPU's speed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gguf.hpp"
#include "gpu_shard.hpp"
#include "gpu_stage.hpp"
#include "shard.hpp"
#include "model.hpp"

using namespace troupe;

namespace {

constexpr int kBlockSize = 16;

int fail(const Error& e) {
  std::fprintf(stderr, "gpu_check: %s\n", e.message.c_str());
  return 1;
}

Expected<std::shared_ptr<const Model>> open_model(const std::string& path) {
  auto file = GgufFile::open(path);
  if (!file) return file.error();
  return Model::load(*file);
}

// One sequence's tokens at pos0 .., its block table 0, 1, 2, ...
StepLayout one_sequence(int n, int pos0) {
  StepLayout step;
  StepLayout::Seq seq;
  seq.n = n;
  seq.pos0 = pos0;
  for (int b = 0; b * kBlockSize < pos0 + n; ++b) seq.block_table.push_back(b);
  step.seqs.push_back(seq);
  step.n_tokens = n;
  return step;
}

int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

// The gap between the best and the second best logit.
float margin(const float* v, int n) {
  const int best = argmax(v, n);
  float second = -INFINITY;
  for (int i = 0; i < n; ++i) {
    if (i != best) second = std::max(second, v[i]);
  }
  return v[best] - second;
}

// The model as 1 or 2 GPU stages chained through host memory: one sequence, its block table 0, 1, 2, ...
class GpuModel {
 public:
  // d2d: the stages hand the residual stream over device to device (run_device), not through the host.
  static Expected<GpuModel> create(std::shared_ptr<const Model> model, int n_stages, int max_tokens, int n_blocks,
                                   bool d2d = false) {
    GpuModel g;
    g.model_ = model;
    g.d2d_ = d2d;
    const int L = model->config().n_layer;
    for (int s = 0; s < n_stages; ++s) {
      GpuStageSpec spec;
      spec.layer_begin = L * s / n_stages;
      spec.layer_end = L * (s + 1) / n_stages;
      spec.first = s == 0;
      spec.last = s == n_stages - 1;
      spec.max_tokens = max_tokens;
      spec.n_blocks = n_blocks;
      spec.block_size = kBlockSize;
      spec.output_slots = d2d ? 2 : 0;
      auto st = GpuStage::create(model, spec);
      if (!st) return st.error();
      g.stages_.push_back(std::move(*st));
    }
    return g;
  }
  // Runs tokens at pos0.. of the sequence; the logits of the last token.
  Expected<std::vector<float>> run(const std::vector<TokenId>& tokens, int pos0) {
    const ModelConfig& c = model_->config();
    const int n = static_cast<int>(tokens.size());
    const StepLayout step = one_sequence(n, pos0);
    std::vector<float> x(static_cast<size_t>(n) * c.n_embd), y(x.size()), logits(c.n_vocab);
    DeviceActivations dev{};
    bool on_device = false;
    ++step_id_;
    for (auto& st : stages_) {
      DeviceActivations out{};
      auto r = st->run_device(step, step_id_, tokens.data(), x.data(), on_device ? &dev : nullptr, y.data(), d2d_, &out,
                              {n - 1}, logits.data());
      if (!r) return r.error();
      std::swap(x, y);
      dev = out;
      on_device = d2d_;
    }
    return logits;
  }

 private:
  std::shared_ptr<const Model> model_;
  std::vector<std::unique_ptr<GpuStage>> stages_;
  bool d2d_ = false;
  uint64_t step_id_ = 0;
};

// The model as one stage split into head groups, each a GpuShard: the stage's part (embedding, norms, the sum of
// the partials, the logits) on the CPU, as the stage actor does it.
class GpuShardedModel {
 public:
  static Expected<GpuShardedModel> create(std::shared_ptr<const Model> model, int tp, int max_tokens, int n_blocks) {
    GpuShardedModel g;
    g.model_ = model;
    auto specs = split_stage(model->config(), 0, model->config().n_layer, tp);
    if (!specs) return specs.error();
    for (const ShardSpec& spec : *specs) {
      auto shard = GpuShard::create(model, {0, spec, max_tokens, n_blocks, kBlockSize});
      if (!shard) return shard.error();
      g.shards_.push_back(std::move(*shard));
    }
    g.stage_ = std::make_unique<StageCompute>(model, Precision::fast, max_tokens);
    return g;
  }
  Expected<std::vector<float>> run(const std::vector<TokenId>& tokens, int pos0) {
    const ModelConfig& c = model_->config();
    const int n = static_cast<int>(tokens.size());
    const StepLayout step = one_sequence(n, pos0);
    const size_t size = static_cast<size_t>(n) * c.n_embd;
    std::vector<float> x(size), xn(size), logits(c.n_vocab);
    std::vector<std::vector<double>> partials(shards_.size(), std::vector<double>(size));
    std::vector<const double*> views;
    for (const auto& p : partials) views.push_back(p.data());
    stage_->embed(tokens.data(), n, x.data());
    for (int il = 0; il < c.n_layer; ++il) {
      const LayerWeights& L = model_->layer(il);
      stage_->norm(L.attn_norm, x.data(), n, xn.data());
      for (size_t g = 0; g < shards_.size(); ++g) {
        if (auto r = shards_[g]->attention(il, step, xn.data(), partials[g].data()); !r) return r.error();
      }
      stage_->add_partials(x.data(), n, views);
      stage_->norm(L.ffn_norm, x.data(), n, xn.data());
      for (size_t g = 0; g < shards_.size(); ++g) {
        if (auto r = shards_[g]->ffn(il, n, xn.data(), partials[g].data()); !r) return r.error();
      }
      stage_->add_partials(x.data(), n, views);
    }
    stage_->logits(x.data(), {n - 1}, logits.data());
    return logits;
  }

 private:
  std::shared_ptr<const Model> model_;
  std::vector<std::unique_ptr<GpuShard>> shards_;
  std::unique_ptr<StageCompute> stage_;
};

}  // namespace

int check_forward(const std::string& path, int n_gen) {
  auto model = open_model(path);
  if (!model) return fail(model.error());
  const ModelConfig& c = (*model)->config();
  std::printf("forward: %s: %d layers, embd %d, heads %d/%d, vocab %d\n", path.c_str(), c.n_layer, c.n_embd, c.n_head,
              c.n_head_kv, c.n_vocab);
  // Prompts of random ids (the model may be synthetic, without a meaningful vocabulary), of several lengths.
  std::mt19937 rng(7);
  std::vector<std::vector<TokenId>> prompts;
  for (int len : {1, 9, 40, 130}) {
    std::vector<TokenId> p(len);
    for (auto& t : p) t = std::uniform_int_distribution<int>(0, c.n_vocab - 1)(rng);
    prompts.push_back(p);
  }
  const int max_ctx = 130 + n_gen + 1;
  int failed = 0;
  // one stage; two chained through the host; two handing over device to device; one stage as GPU head groups (as
  // many as the model has KV heads, up to 4)
  const int n_blocks = (max_ctx + kBlockSize - 1) / kBlockSize + 1;
  const int tp = std::min(c.n_head_kv, 4);
  for (int config = 0; config < 4; ++config) {
    const int n_stages = config == 0 || config == 3 ? 1 : 2;
    const bool d2d = config == 2;
    if (n_stages > c.n_layer) continue;
    std::optional<GpuModel> staged;
    std::optional<GpuShardedModel> sharded;
    if (config < 3) {
      auto g = GpuModel::create(*model, n_stages, 256, n_blocks, d2d);
      if (!g) return fail(g.error());
      staged.emplace(std::move(*g));
    } else {
      auto g = GpuShardedModel::create(*model, tp, 256, n_blocks);
      if (!g) return fail(g.error());
      sharded.emplace(std::move(*g));
    }
    auto run_gpu = [&](const std::vector<TokenId>& tokens, int pos) {
      return staged ? staged->run(tokens, pos) : sharded->run(tokens, pos);
    };
    const std::string what = config == 3 ? std::to_string(tp) + " GPU head groups" :
                             std::to_string(n_stages) + " stage(s)" + (d2d ? " device to device" : "");
    Forward cpu(*model, 256, Precision::fast);
    ThreadTeam team(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    cpu.set_team(&team);  // the CPU reference on every core: its results do not depend on the team
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      KvCache cache = cpu.make_cache(max_ctx);
      std::vector<TokenId> cpu_tokens, gpu_tokens;
      double max_diff = 0, max_logit = 0;
      float tie_margin = INFINITY;  // the CPU's top-1 margin where the paths first chose differently
      auto compare = [&](const float* cl, const std::vector<float>& gl) {
        for (int i = 0; i < c.n_vocab; ++i) {
          max_diff = std::max(max_diff, std::fabs(static_cast<double>(cl[i]) - gl[i]));
          max_logit = std::max(max_logit, std::fabs(static_cast<double>(cl[i])));
        }
      };
      auto cl = cpu.run(prompts[pi].data(), static_cast<int>(prompts[pi].size()), 0, cache);
      if (!cl) return fail(cl.error());
      auto gl = run_gpu(prompts[pi], 0);
      if (!gl) return fail(gl.error());
      compare(*cl, *gl);
      int pos = static_cast<int>(prompts[pi].size());
      for (int i = 0; i < n_gen; ++i) {
        const int ct = argmax(*cl, c.n_vocab), gt = argmax(gl->data(), c.n_vocab);
        if (ct != gt && tie_margin == INFINITY) tie_margin = margin(*cl, c.n_vocab);
        cpu_tokens.push_back(ct);
        gpu_tokens.push_back(gt);
        if (i + 1 == n_gen) break;
        cl = cpu.run(&cpu_tokens.back(), 1, pos, cache);
        if (!cl) return fail(cl.error());
        if (ct == gt) {
          gl = run_gpu({gt}, pos);
          if (!gl) return fail(gl.error());
          compare(*cl, *gl);
        } else {
          gl = run_gpu({gt}, pos);  // each path follows its own choice
          if (!gl) return fail(gl.error());
        }
        ++pos;
      }
      const bool equal = cpu_tokens == gpu_tokens;
      const double rel = max_logit > 0 ? max_diff / max_logit : max_diff;
      // Logits within 1e-3 of their magnitude: the paths differ only in the order of float additions (and the
      // rare 8-bit rounding decision that order flips), ~1e-5 per layer; greedy tokens equal unless the CPU's
      // own choice was a near tie (margin under 1e-3 of the magnitude), where either token is right.
      const bool ok = rel <= 1e-3 && (equal || tie_margin <= 1e-3 * max_logit);
      failed += !ok;
      std::printf("  %s, prompt of %3zu tokens: max logit diff %.3g (%.2g of max |logit| %.3g), %d greedy "
                  "tokens %s%s\n",
                  what.c_str(), prompts[pi].size(), max_diff, rel, max_logit, n_gen, equal ? "equal" : "DIFFER",
                  ok ? "" : "  FAIL");
      if (!equal) std::printf("    first difference at a CPU top-1 margin of %.3g\n", tie_margin);
    }
  }
  std::printf("forward: %d failed\n", failed);
  return failed ? 1 : 0;
}

int bench(const std::string& path) {
  auto model = open_model(path);
  if (!model) return fail(model.error());
  const ModelConfig& c = (*model)->config();
  const int ctx = 160;  // each decoding sequence's context
  const int max_batch = 64;
  const int steps = 64;
  const int blocks_per_seq = (ctx + steps + 3 + kBlockSize - 1) / kBlockSize;  // the last step's position fits
  GpuStageSpec spec;
  spec.layer_begin = 0;
  spec.layer_end = c.n_layer;
  spec.first = spec.last = true;
  spec.max_tokens = 512;
  spec.n_blocks = std::max(max_batch * blocks_per_seq, 512 / kBlockSize + 1);
  spec.block_size = kBlockSize;
  auto stage = GpuStage::create(*model, spec);
  if (!stage) return fail(stage.error());
  auto& st = **stage;

  // weight bytes a decode step reads once (the embedding reads one row per token: left out)
  double weight_bytes = static_cast<double>((*model)->output().rows * (*model)->output().row_bytes);
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = (*model)->layer(il);
    for (const Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
      weight_bytes += m->rows * m->row_bytes;
  }
  const double hbm_gbs = std::getenv("TROUPE_HBM_GBS") ? std::atof(std::getenv("TROUPE_HBM_GBS")) : 4800.0;
  std::printf("bench: %s on %s, %.0f MiB of weights per decode step, device holds %.0f MiB\n", path.c_str(),
              st.device_name().c_str(), weight_bytes / (1 << 20), st.device_bytes() / double(1 << 20));

  std::mt19937 rng(3);
  auto random_tokens = [&](int n) {
    std::vector<TokenId> t(n);
    for (auto& x : t) x = std::uniform_int_distribution<int>(0, c.n_vocab - 1)(rng);
    return t;
  };
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); };

  // prefill: one sequence of 512 tokens, best of 3
  {
    const StepLayout step = one_sequence(512, 0);
    const auto tokens = random_tokens(512);
    std::vector<float> logits(c.n_vocab);
    double best = INFINITY;
    for (int rep = 0; rep < 4; ++rep) {
      const auto t0 = Clock::now();
      if (auto r = st.run(step, tokens.data(), nullptr, nullptr, {511}, logits.data()); !r) return fail(r.error());
      if (rep > 0) best = std::min(best, seconds(t0));
    }
    std::printf("  prefill 512 tokens: %.0f tokens/s\n", 512 / best);
  }
  // decode: B sequences of one token each per step, at contexts from ctx on
  double tps1 = 0;
  for (int B : {1, 16, 64}) {
    std::vector<float> logits(static_cast<size_t>(B) * c.n_vocab);
    std::vector<int> rows(B);
    double elapsed = 0;
    for (int i = -3; i < steps; ++i) {  // three warm-up steps capture the graph
      StepLayout step;
      for (int s = 0; s < B; ++s) {
        StepLayout::Seq seq;
        seq.first = s;
        seq.n = 1;
        seq.pos0 = ctx + i + 3;
        for (int b = 0; b * kBlockSize < seq.pos0 + 1; ++b) seq.block_table.push_back(s * blocks_per_seq + b);
        step.seqs.push_back(seq);
        rows[s] = s;
      }
      step.n_tokens = B;
      const auto tokens = random_tokens(B);
      const auto t0 = Clock::now();
      if (auto r = st.run(step, tokens.data(), nullptr, nullptr, rows, logits.data()); !r) return fail(r.error());
      if (i >= 0) elapsed += seconds(t0);
    }
    const double tps = B * steps / elapsed;
    if (B == 1) tps1 = tps;
    std::printf("  decode batch %2d: %8.0f tokens/s (%.2f ms per step)", B, tps, 1e3 * elapsed / steps);
    if (B == 1) {
      std::printf(", %.0f GB/s of weights = %.0f%% of %.0f GB/s\n", weight_bytes * tps / 1e9,
                  100 * weight_bytes * tps / 1e9 / hbm_gbs, hbm_gbs);
    } else {
      std::printf(", %.1fx batch 1\n", tps / tps1);
    }
  }
  return 0;
}
