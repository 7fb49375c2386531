// kernels_bench.cpp: the CPU kernels alone, on the default model's matrix shapes, with random weights (speed does not
// depend on values). Google Benchmark: it handles repetitions, warm-up and statistics, and prints multiply-adds per
// second as a rate counter (MAC/s), the figure to compare with the core's peak.
//   build/troupe-kernels-bench --benchmark_filter=q4_1 --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "fp16.hpp"
#include "kernels.hpp"

using namespace troupe;

namespace {

struct Weights {
  std::vector<uint8_t> bytes;
  Matrix m;
  Weights(GgmlType type, int64_t rows, int64_t cols) {
    const GgmlTypeTraits* tr = ggml_type_traits(static_cast<uint32_t>(type));
    std::mt19937 rng(1);
    m.type = type;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = cols / tr->block_elems * tr->block_bytes;
    bytes.resize(m.row_bytes * rows);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    for (int64_t i = 0; i < rows * cols / tr->block_elems; ++i) {  // finite scales
      const uint16_t d = f32_to_fp16(0.01f);
      std::memcpy(bytes.data() + i * tr->block_bytes, &d, 2);
    }
    m.data = bytes.data();
  }
};

// args: rows, cols, tokens
void run_matmul(benchmark::State& state, GgmlType type, const Kernels& k) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int n = static_cast<int>(state.range(2));
  Weights w(type, rows, cols);
  std::vector<float> x(n * cols), y(n * rows);
  std::mt19937 rng(2);
  std::normal_distribution<float> d;
  for (auto& v : x) v = d(rng);
  std::vector<BlockQ8> xq(n * cols / kQBlock);
  if (k.quantize_q8) k.quantize_q8(x.data(), xq.data(), n * cols);
  for (auto _ : state) {
    matmul(w.m, x.data(), k.quantize_q8 ? xq.data() : nullptr, y.data(), n, 0, rows, k);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(rows * cols * n) * state.iterations(),
                                               benchmark::Counter::kIsRate);
}

void matmul_q4_1(benchmark::State& s) { run_matmul(s, GgmlType::q4_1, kernels()); }
void matmul_q4_0(benchmark::State& s) { run_matmul(s, GgmlType::q4_0, kernels()); }
void matmul_q8_0(benchmark::State& s) { run_matmul(s, GgmlType::q8_0, kernels()); }
void matmul_q4_1_scalar(benchmark::State& s) { run_matmul(s, GgmlType::q4_1, scalar_kernels()); }

void shapes(benchmark::internal::Benchmark* b) {
  for (int n : {1, 4, 16, 64}) {
    b->Args({576, 576, n});    // attention projections
    b->Args({1536, 576, n});   // FFN gate and up
    b->Args({576, 1536, n});   // FFN down
  }
}

BENCHMARK(matmul_q4_1)->Apply(shapes);
BENCHMARK(matmul_q4_0)->Args({1536, 576, 1})->Args({1536, 576, 16});
BENCHMARK(matmul_q8_0)->Args({8192, 576, 1})->Args({8192, 576, 16});  // a slice of the output projection
BENCHMARK(matmul_q4_1_scalar)->Args({1536, 576, 1})->Args({1536, 576, 16});

// One head over n cached positions (fp16): scores, softmax, weighted values. args: positions
void attention_head(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), hd = 64, stride = 192;
  std::vector<uint16_t> k(n * stride, f32_to_fp16(0.1f)), v(n * stride, f32_to_fp16(0.2f));
  std::vector<float> q(hd, 0.3f), scores(n), out(hd);
  for (auto _ : state) {
    attn_scores(q.data(), k.data(), stride, n, hd, 0.125f, scores.data());
    softmax(scores.data(), n);
    std::fill(out.begin(), out.end(), 0.0f);
    attn_accumulate(scores.data(), v.data(), stride, n, hd, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(2.0 * n * hd * state.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(attention_head)->Arg(64)->Arg(512)->Arg(4096);

}  // namespace

BENCHMARK_MAIN();
