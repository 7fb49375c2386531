// gpu_check: the CUDA backend against the CPU, and its speed (tests/gpu/device-check.sh runs it on a GPU machine).
//
//   troupe-gpu-check kernels                  every kernel on random inputs against its CPU reference
//   troupe-gpu-check forward MODEL [N]        GPU stages against the CPU forward pass: logits and N greedy tokens
//   troupe-gpu-check bench MODEL              decode tokens/s at batch 1, 16, 64 and prefill tokens/s
//   troupe-gpu-check synth SHAPE TYPE PATH    writes a synthetic model (as `troupe synth`; no CAF needed here)
//
// Links only the model core and gpu/ (no CAF, no Beast): it runs where only CUDA is installed. Exit status: 0 all
// passed, 1 a check failed, 77 no CUDA device (ctest reports the test as skipped, never as passed).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fp16.hpp"
#include "gguf.hpp"
#include "gpu_stage.hpp"
#include "kernel_check.hpp"
#include "kernels.hpp"
#include "model.hpp"
#include "synth.hpp"

using namespace troupe;

namespace {

constexpr int kSkip = 77;

int fail(const Error& e) {
  std::fprintf(stderr, "gpu_check: %s\n", e.message.c_str());
  return 1;
}

// A random weight matrix in a GGUF encoding, its bytes held in `bytes`.
Matrix random_matrix(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng, std::vector<uint8_t>& bytes) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  const auto* traits = ggml_type_traits(static_cast<uint32_t>(type));
  Matrix m;
  m.type = type;
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = cols / traits->block_elems * traits->block_bytes;
  bytes.assign(rows * m.row_bytes, 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = bytes.data() + r * m.row_bytes;
    const int64_t nb = cols / kQBlock;
    auto put_half = [](uint8_t* p, float f) { const uint16_t h = f32_to_fp16(f); std::memcpy(p, &h, 2); };
    switch (type) {
      case GgmlType::q4_0:
        for (int64_t b = 0; b < nb; ++b) {
          put_half(row + b * 18, 0.01f + 0.02f * std::fabs(uni(rng)));
          for (int j = 0; j < 16; ++j) row[b * 18 + 2 + j] = static_cast<uint8_t>(byte(rng));
        }
        break;
      case GgmlType::q4_1:
        for (int64_t b = 0; b < nb; ++b) {
          put_half(row + b * 20, 0.01f + 0.02f * std::fabs(uni(rng)));
          put_half(row + b * 20 + 2, -0.1f * std::fabs(uni(rng)));
          for (int j = 0; j < 16; ++j) row[b * 20 + 4 + j] = static_cast<uint8_t>(byte(rng));
        }
        break;
      case GgmlType::q8_0:
        for (int64_t b = 0; b < nb; ++b) {
          put_half(row + b * 34, 0.001f + 0.002f * std::fabs(uni(rng)));
          for (int j = 0; j < 32; ++j) row[b * 34 + 2 + j] = static_cast<uint8_t>(byte(rng));
        }
        break;
      case GgmlType::f32:
        for (int64_t j = 0; j < cols; ++j) { const float f = 0.1f * uni(rng); std::memcpy(row + 4 * j, &f, 4); }
        break;
      case GgmlType::f16:
        for (int64_t j = 0; j < cols; ++j) put_half(row + 2 * j, 0.1f * uni(rng));
        break;
      case GgmlType::bf16:
        for (int64_t j = 0; j < cols; ++j) {
          const uint16_t h = static_cast<uint16_t>(f32_to_bits(0.1f * uni(rng)) >> 16);
          std::memcpy(row + 2 * j, &h, 2);
        }
        break;
    }
  }
  m.data = bytes.data();
  return m;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> g(0.0f, scale);
  std::vector<float> v(n);
  for (float& f : v) f = g(rng);
  return v;
}

// max |a - b| / max |b|: the error relative to the reference's magnitude
double normalised_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, mag = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::fabs(static_cast<double>(b[i])));
  }
  if (!std::isfinite(diff)) return INFINITY;
  return mag > 0 ? diff / mag : diff;
}

struct Report {
  int failed = 0;
  void row(const std::string& what, double err, double tol) {
    const bool ok = err <= tol;
    failed += !ok;
    std::printf("  %-44s error %.3g (tolerance %.0e) %s\n", what.c_str(), err, tol, ok ? "ok" : "FAIL");
  }
};

int check_kernels() {
  std::mt19937 rng(1234);
  Report rep;
  std::printf("kernels against the CPU reference (normalised max error):\n");

  // quantisation: the CPU's bytes exactly
  {
    const int n = 7, cols = 1024;
    auto x = random_floats(n * cols, rng);
    x[5] = 0;
    std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // an all-zero block
    std::vector<BlockQ8> g(n * cols / kQBlock), c(g.size());
    if (auto r = gpu_check::quantize_q8(x.data(), n, cols, g.data()); !r) return fail(r.error());
    for (int t = 0; t < n; ++t) scalar_kernels().quantize_q8(x.data() + t * cols, c.data() + t * cols / kQBlock, cols);
    int differ = 0;
    for (size_t i = 0; i < g.size(); ++i) differ += std::memcmp(&g[i], &c[i], sizeof(BlockQ8)) != 0;
    rep.row("quantize_q8 (blocks differing from the CPU's)", differ, 0);
  }
  // matmul per weight type, token counts across the tile size
  for (GgmlType type : {GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0, GgmlType::f16, GgmlType::f32, GgmlType::bf16}) {
    for (int n : {1, 5, 8, 13}) {
      const int64_t rows = 200, cols = 1536;
      std::vector<uint8_t> bytes;
      const Matrix w = random_matrix(type, rows, cols, rng, bytes);
      auto x = random_floats(n * cols, rng);
      std::vector<float> g(n * rows), c(n * rows);
      if (auto r = gpu_check::matmul(w, x.data(), n, g.data()); !r) return fail(r.error());
      std::vector<BlockQ8> xq(n * cols / kQBlock);
      for (int t = 0; t < n; ++t)
        scalar_kernels().quantize_q8(x.data() + t * cols, xq.data() + t * cols / kQBlock, cols);
      matmul(w, x.data(), w.quantized() ? xq.data() : nullptr, c.data(), n, 0, rows, scalar_kernels());
      rep.row(std::string("matmul ") + ggml_type_traits(static_cast<uint32_t>(type))->name + " 200x1536, " +
                  std::to_string(n) + " tokens",
              normalised_error(g, c), 1e-5);
    }
  }
  // element-wise
  {
    const int n = 5, dim = 576;
    auto x = random_floats(n * dim, rng), w = random_floats(dim, rng);
    std::vector<float> g(n * dim), c(n * dim);
    if (auto r = gpu_check::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, g.data()); !r) return fail(r.error());
    for (int t = 0; t < n; ++t) rmsnorm(c.data() + t * dim, x.data() + t * dim, w.data(), dim, 1e-5f);
    rep.row("rmsnorm 5x576", normalised_error(g, c), 1e-6);
  }
  {
    const int n = 6, heads = 9, hd = 64;
    auto x = random_floats(n * heads * hd, rng);
    std::vector<int> pos = {0, 1, 17, 300, 4095, 8000};
    auto g = x, c = x;
    if (auto r = gpu_check::rope(g.data(), pos.data(), n, heads, hd, hd, 10000.0f); !r) return fail(r.error());
    for (int t = 0; t < n; ++t) rope(c.data() + t * heads * hd, heads, hd, hd, pos[t], 10000.0f);
    rep.row("rope 6 positions up to 8000, 9x64", normalised_error(g, c), 1e-5);
  }
  {
    const int64_t n = 10000;
    auto gate = random_floats(n, rng, 3.0f), up = random_floats(n, rng);
    std::vector<float> g = gate, c(n);
    if (auto r = gpu_check::swiglu(g.data(), up.data(), n); !r) return fail(r.error());
    swiglu(c.data(), gate.data(), up.data(), n);
    rep.row("swiglu 10000", normalised_error(g, c), 1e-6);
  }
  for (GgmlType type : {GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0, GgmlType::f16}) {
    std::vector<uint8_t> bytes;
    const Matrix w = random_matrix(type, 1000, 576, rng, bytes);
    std::vector<int> tokens = {0, 999, 17, 17, 500};
    std::vector<float> g(tokens.size() * 576), c(g.size());
    if (auto r = gpu_check::embed(w, tokens.data(), static_cast<int>(tokens.size()), g.data()); !r)
      return fail(r.error());
    for (size_t t = 0; t < tokens.size(); ++t) dequantize_row(w, tokens[t], c.data() + t * 576);
    rep.row(std::string("embed ") + ggml_type_traits(static_cast<uint32_t>(type))->name, normalised_error(g, c), 0);
  }
  // attention over a paged cache: a prefill chunk of one sequence after its earlier positions, and decode tokens of
  // three others, their blocks scattered over the pool
  for (int hd : {64, 128}) {
    const int n_head = 8, n_head_kv = 2, kv_dim = n_head_kv * hd, bs = 16, n_blocks = 64;
    StepLayout step;
    std::vector<int> free_blocks(n_blocks);
    for (int b = 0; b < n_blocks; ++b) free_blocks[b] = (b * 37) % n_blocks;  // a permutation
    int next = 0;
    auto add_seq = [&](int n, int pos0) {
      StepLayout::Seq s;
      s.first = step.n_tokens;
      s.n = n;
      s.pos0 = pos0;
      for (int p = 0; p < pos0 + n; p += bs) s.block_table.push_back(free_blocks[next++]);
      step.seqs.push_back(s);
      step.n_tokens += n;
    };
    add_seq(20, 45);
    add_seq(1, 0);
    add_seq(1, 130);
    add_seq(1, 31);
    const int n = step.n_tokens;
    std::vector<uint16_t> kc(static_cast<size_t>(n_blocks) * bs * kv_dim), vc(kc.size());
    for (auto* cache : {&kc, &vc}) {
      for (auto& h : *cache) h = f32_to_fp16(std::normal_distribution<float>(0, 1)(rng));
    }
    auto q = random_floats(n * n_head * hd, rng), k = random_floats(n * kv_dim, rng),
         v = random_floats(n * kv_dim, rng);
    std::vector<float> g(n * n_head * hd), c(g.size());
    auto kc_gpu = kc, vc_gpu = vc;
    if (auto r = gpu_check::attention(step, q.data(), k.data(), v.data(), kc_gpu, vc_gpu, bs, n_head, n_head_kv, hd,
                                      g.data());
        !r) {
      return fail(r.error());
    }
    // the CPU: store, gather each sequence's rows in position order, then scores, softmax, accumulate
    auto row_of = [&](const StepLayout::Seq& s, int p) {
      return static_cast<size_t>(s.block_table[p / bs]) * bs + p % bs;
    };
    for (const auto& s : step.seqs) {
      for (int t = 0; t < s.n; ++t) {
        const size_t row = row_of(s, s.pos0 + t);
        for (int e = 0; e < kv_dim; ++e) {
          kc[row * kv_dim + e] = f32_to_fp16(k[(s.first + t) * kv_dim + e]);
          vc[row * kv_dim + e] = f32_to_fp16(v[(s.first + t) * kv_dim + e]);
        }
      }
    }
    int cache_differs = (kc != kc_gpu) + (vc != vc_gpu);
    for (const auto& s : step.seqs) {
      const int len = s.pos0 + s.n;
      std::vector<uint16_t> ks(static_cast<size_t>(len) * kv_dim), vs(ks.size());
      for (int p = 0; p < len; ++p) {
        std::memcpy(&ks[p * kv_dim], &kc[row_of(s, p) * kv_dim], kv_dim * 2);
        std::memcpy(&vs[p * kv_dim], &vc[row_of(s, p) * kv_dim], kv_dim * 2);
      }
      std::vector<float> scores(len);
      for (int t = 0; t < s.n; ++t) {
        const int n_past = s.pos0 + t + 1;
        for (int h = 0; h < n_head; ++h) {
          const int off = (h / (n_head / n_head_kv)) * hd;
          const float* qh = &q[((s.first + t) * n_head + h) * hd];
          float* out = &c[((s.first + t) * n_head + h) * hd];
          attn_scores(qh, ks.data() + off, kv_dim, n_past, hd, 1.0f / std::sqrt(static_cast<float>(hd)), scores.data());
          softmax(scores.data(), n_past);
          std::fill(out, out + hd, 0.0f);
          attn_accumulate(scores.data(), vs.data() + off, kv_dim, n_past, hd, out);
        }
      }
    }
    rep.row("kv_store (caches differing from the CPU's), head " + std::to_string(hd), cache_differs, 0);
    rep.row("attention paged, 4 sequences, head " + std::to_string(hd), normalised_error(g, c), 1e-4);
  }
  std::printf("kernels: %d failed\n", rep.failed);
  return rep.failed ? 1 : 0;
}

}  // namespace

// A synthetic model of a named shape with `type` layer weights.
int synth(const std::string& shape, const std::string& type, const std::string& path) {
  auto spec = synth_shape(shape);
  if (!spec) return fail(spec.error());
  const std::pair<const char*, GgmlType> types[] = {{"q4_0", GgmlType::q4_0}, {"q4_1", GgmlType::q4_1},
                                                    {"q8_0", GgmlType::q8_0}, {"f16", GgmlType::f16},
                                                    {"f32", GgmlType::f32}};
  bool known = false;
  for (const auto& [name, t] : types) {
    if (type == name) {
      spec->weight_type = t;
      known = true;
    }
  }
  if (!known)
    return fail(Error{ErrorKind::invalid_argument, "weight type " + type + ": expected q4_0, q4_1, q8_0, f16 or f32"});
  const auto t0 = std::chrono::steady_clock::now();
  if (auto r = write_synth_gguf(*spec, path); !r) return fail(r.error());
  std::printf("synth: %s %s: %.0f MiB in %.1f s\n", shape.c_str(), type.c_str(),
              synth_file_size(*spec) / double(1 << 20),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

int check_forward(const std::string& path, int n_gen);
int bench(const std::string& path);

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "synth" && argc == 5) return synth(argv[2], argv[3], argv[4]);  // needs no device
  if (cmd != "kernels" && cmd != "forward" && cmd != "bench") {
    std::fprintf(stderr,
                 "usage: troupe-gpu-check kernels | forward MODEL [TOKENS] | bench MODEL | synth SHAPE TYPE PATH\n");
    return 2;
  }
  std::string why;
  if (!cuda_built()) {
    std::printf("gpu_check: skipped: built without CUDA\n");
    return kSkip;
  }
  if (cuda_device_count(&why) == 0) {
    std::printf("gpu_check: skipped: no CUDA device (%s)\n", why.c_str());
    return kSkip;
  }
  if (cmd == "kernels") return check_kernels();
  if (argc < 3) return 2;
  if (cmd == "forward") return check_forward(argv[2], argc > 3 ? std::atoi(argv[3]) : 32);
  return bench(argv[2]);
}
