// Kernels against their references: the SIMD versions against the scalar ones (exactly, or to float rounding), and
// the scalar quantised dot products against a plain float dot product of dequantised weights.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fp16.hpp"
#include "kernels.hpp"

using namespace troupe;

namespace {

// A random weight matrix of the given type, rows x cols, with realistic scales.
struct RandomMatrix {
  std::vector<uint8_t> bytes;
  Matrix m;
  RandomMatrix(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f), val(-1.0f, 1.0f);
    const GgmlTypeTraits* tr = ggml_type_traits(static_cast<uint32_t>(type));
    m.type = type;
    m.rows = rows;
    m.cols = cols;
    m.row_bytes = cols / tr->block_elems * tr->block_bytes;
    bytes.resize(m.row_bytes * rows);
    for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
    const int64_t n_blocks = rows * cols / tr->block_elems;
    for (int64_t i = 0; i < n_blocks; ++i) {
      uint8_t* blk = bytes.data() + i * tr->block_bytes;
      auto put16 = [&](int off, uint16_t v) { std::memcpy(blk + off, &v, 2); };
      switch (type) {
        case GgmlType::q4_0: case GgmlType::q8_0: put16(0, f32_to_fp16(scale(rng))); break;
        case GgmlType::q4_1: put16(0, f32_to_fp16(scale(rng))); put16(2, f32_to_fp16(-8 * scale(rng))); break;
        case GgmlType::f32: { float f = val(rng); std::memcpy(blk, &f, 4); break; }
        case GgmlType::f16: put16(0, f32_to_fp16(val(rng))); break;
        case GgmlType::bf16: put16(0, static_cast<uint16_t>(f32_to_bits(val(rng)) >> 16)); break;
      }
    }
    m.data = bytes.data();
  }
};

std::vector<float> random_vector(int64_t n, std::mt19937& rng, float range = 2.0f) {
  std::normal_distribution<float> d(0.0f, range);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

const GgmlType kAllTypes[] = {GgmlType::f32, GgmlType::f16, GgmlType::bf16, GgmlType::q4_0, GgmlType::q4_1, GgmlType::q8_0};

// Columns [c0, c1) of w, as a tensor-parallel shard holds them: same rows and row stride, data advanced by c0.
Matrix column_slice(const Matrix& w, int64_t c0, int64_t c1) {
  const GgmlTypeTraits* tr = ggml_type_traits(static_cast<uint32_t>(w.type));
  Matrix s = w;
  s.data = w.data + c0 / tr->block_elems * tr->block_bytes;
  s.cols = c1 - c0;
  return s;
}

// Every kernel set there is on this CPU: fast and exact, scalar and SIMD.
std::vector<const Kernels*> all_kernel_sets() {
  std::vector<const Kernels*> sets{&scalar_kernels(), &scalar_exact_kernels()};
  if (const Kernels* k = avx2_kernels()) sets.push_back(k);
  if (const Kernels* k = avx2_vnni_kernels()) sets.push_back(k);
  if (const Kernels* k = avx512_vnni_kernels()) sets.push_back(k);
  if (const Kernels* k = avx2_exact_kernels()) sets.push_back(k);
  return sets;
}

}  // namespace

TEST_CASE("kernels: fp16 conversion round-trips every half value and rounds to nearest even") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    REQUIRE(f32_to_fp16(f) == h);
  }
  CHECK(f32_to_fp16(1.0f + 1.0f / 2048) == f32_to_fp16(1.0f));            // a tie rounds to the even neighbour
  CHECK(f32_to_fp16(1.0f + 3.0f / 2048) == f32_to_fp16(1.0f + 2.0f / 1024));
  CHECK(f32_to_fp16(70000.0f) == 0x7c00);                                  // overflow to inf
  CHECK(fp16_to_f32(f32_to_fp16(1e-7f)) == doctest::Approx(1.1920929e-07f));  // subnormal
}

TEST_CASE("kernels: 8-bit activation quantisation matches the reference exactly") {
  std::mt19937 rng(1);
  const Kernels* simd = avx2_kernels();
  if (!simd) return;
  for (int trial = 0; trial < 50; ++trial) {
    auto x = random_vector(256, rng, trial % 2 ? 0.01f : 5.0f);
    if (trial == 3) std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero block
    std::vector<BlockQ8> a(8), b(8);
    scalar_kernels().quantize_q8(x.data(), a.data(), 256);
    simd->quantize_q8(x.data(), b.data(), 256);
    for (int i = 0; i < 8; ++i) {
      REQUIRE(a[i].d == b[i].d);
      REQUIRE(a[i].s == b[i].s);
      for (int j = 0; j < 32; ++j) REQUIRE(a[i].qs[j] == b[i].qs[j]);
    }
  }
}

TEST_CASE("kernels: scalar quantised dot products equal a float dot of dequantised rows") {
  std::mt19937 rng(2);
  for (GgmlType type : kAllTypes) {
    CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
    RandomMatrix w(type, 8, 512, rng);
    auto x = random_vector(512, rng);
    std::vector<BlockQ8> xq(512 / kQBlock);
    scalar_kernels().quantize_q8(x.data(), xq.data(), 512);
    std::vector<float> row(512), xd(512);
    for (int b = 0; b < 16; ++b)
      for (int j = 0; j < 32; ++j) xd[b * 32 + j] = xq[b].d * xq[b].qs[j];  // what the quantised path sees
    for (int r = 0; r < 8; ++r) {
      dequantize_row(w.m, r, row.data());
      const bool q = w.m.quantized();
      double want = 0, scale = 0;
      for (int j = 0; j < 512; ++j) {
        want += static_cast<double>(row[j]) * (q ? xd[j] : x[j]);
        scale += std::fabs(row[j] * x[j]);
      }
      const double got = scalar_kernels().dot(w.m, r, x.data(), xq.data());
      // Q4_1's offset term uses s rounded through fp16, so allow a relative error of a few 1e-4 of the magnitude.
      REQUIRE(std::fabs(got - want) <= 1e-3 * scale + 1e-5);
    }
  }
}

TEST_CASE("kernels: SIMD dot products match the scalar reference for every type") {
  std::mt19937 rng(3);
  for (const Kernels* simd : {avx2_kernels(), avx2_vnni_kernels(), avx512_vnni_kernels()}) {
    if (!simd) continue;
    CAPTURE(simd->name);
    for (GgmlType type : kAllTypes) {
      CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
      for (int64_t cols : {32, 64, 576, 1536}) {
        RandomMatrix w(type, 5, cols, rng);
        auto x = random_vector(cols, rng);
        std::vector<BlockQ8> xq(cols / kQBlock);
        scalar_kernels().quantize_q8(x.data(), xq.data(), cols);
        std::vector<float> row(cols);
        for (int r = 0; r < 5; ++r) {
          const double a = scalar_kernels().dot(w.m, r, x.data(), xq.data());
          const double b = simd->dot(w.m, r, x.data(), xq.data());
          if (w.m.quantized()) {
            REQUIRE(a == b);  // the same exact block terms, added in the same double lanes
            continue;
          }
          // Float rows: only the order of float additions differs; bound the error by the magnitude of the terms.
          dequantize_row(w.m, r, row.data());
          double magnitude = 0;
          for (int64_t j = 0; j < cols; ++j) magnitude += std::fabs(row[j] * x[j]);
          REQUIRE(std::fabs(a - b) <= 1e-6 * magnitude + 1e-6);
        }
      }
    }
  }
}

TEST_CASE("kernels: matmul over a batch equals one dot product per token and row") {
  std::mt19937 rng(4);
  RandomMatrix w(GgmlType::q4_1, 7, 128, rng);
  const int n_tokens = 3;
  auto x = random_vector(n_tokens * 128, rng);
  std::vector<BlockQ8> xq(n_tokens * 4);
  for (int t = 0; t < n_tokens; ++t) kernels().quantize_q8(&x[t * 128], &xq[t * 4], 128);
  std::vector<float> y(n_tokens * 7, -1.0f);
  matmul(w.m, x.data(), xq.data(), y.data(), n_tokens, 2, 6);
  for (int t = 0; t < n_tokens; ++t) {
    for (int r = 0; r < 7; ++r) {
      if (r < 2 || r >= 6) {
        CHECK(y[t * 7 + r] == -1.0f);  // rows outside the range are untouched
      } else {
        CHECK(y[t * 7 + r] == static_cast<float>(kernels().dot(w.m, r, &x[t * 128], &xq[t * 4])));
      }
    }
  }
}

TEST_CASE("kernels: the batched kernel gives each row and token exactly its dot product, for any batch and row") {
  std::mt19937 rng(9);
  for (const Kernels* k : all_kernel_sets()) {
    CAPTURE(k->name);
    for (GgmlType type : kAllTypes) {
      CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
      for (int64_t cols : {32, 96, 576, 608}) {  // 1, 3, 18 and 19 blocks: whole and partial groups of four
        CAPTURE(cols);
        const int rows = 6;
        RandomMatrix w(type, rows, cols, rng);
        for (int n : {1, 3, 16, 17, 40}) {  // within, at and across tiles of tokens
          CAPTURE(n);
          auto x = random_vector(n * cols, rng);
          std::vector<BlockQ8> xq(n * cols / kQBlock);
          const bool quantised_acts = k->quantize_q8 != nullptr;
          if (quantised_acts) k->quantize_q8(x.data(), xq.data(), n * cols);
          const BlockQ8* xqp = quantised_acts ? xq.data() : nullptr;
          std::vector<float> y(n * rows, -1.0f);
          std::vector<double> yd(n * rows, -1.0);
          matmul(w.m, x.data(), xqp, y.data(), n, 1, rows, *k);
          matmul_partial(w.m, x.data(), xqp, yd.data(), n, 1, rows, *k);
          for (int t = 0; t < n; ++t) {
            CHECK(y[t * rows] == -1.0f);  // row 0 is outside the range: untouched
            for (int r = 1; r < rows; ++r) {
              const double want = k->dot(w.m, r, &x[t * cols], quantised_acts ? &xq[t * cols / kQBlock] : nullptr);
              REQUIRE(yd[t * rows + r] == want);
              REQUIRE(y[t * rows + r] == static_cast<float>(want));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("kernels: rmsnorm, rope, swiglu and softmax against direct formulas") {
  std::mt19937 rng(5);
  auto x = random_vector(64, rng);
  auto w = random_vector(64, rng);
  std::vector<float> out(64);
  rmsnorm(out.data(), x.data(), w.data(), 64, 1e-5f);
  double ms = 0;
  for (float v : x) ms += v * v;
  ms /= 64;
  for (int j = 0; j < 64; ++j) CHECK(out[j] == doctest::Approx(x[j] / std::sqrt(ms + 1e-5) * w[j]).epsilon(1e-5));

  // RoPE: each pair rotates by pos * theta^(-2i/d); norms of pairs are preserved; position 0 is the identity.
  auto q = random_vector(2 * 16, rng);
  auto r = q;
  rope(r.data(), 2, 16, 16, 7, 10000.0f);
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 16; i += 2) {
      const double ang = 7.0 * std::pow(10000.0, -static_cast<double>(i) / 16);
      const float a = q[h * 16 + i], b = q[h * 16 + i + 1];
      CHECK(r[h * 16 + i] == doctest::Approx(a * std::cos(ang) - b * std::sin(ang)).epsilon(1e-4).scale(1));
      CHECK(r[h * 16 + i + 1] == doctest::Approx(a * std::sin(ang) + b * std::cos(ang)).epsilon(1e-4).scale(1));
    }
  }
  auto z = q;
  rope(z.data(), 2, 16, 8, 0, 10000.0f);
  CHECK(z == q);
  rope(z.data(), 2, 16, 8, 5, 10000.0f);  // partial rotary: dims 8..15 of each head are left alone
  for (int h = 0; h < 2; ++h)
    for (int i = 8; i < 16; ++i) CHECK(z[h * 16 + i] == q[h * 16 + i]);

  std::vector<float> g{-3.0f, 0.0f, 2.5f}, u{2.0f, 1.0f, -1.0f}, s(3);
  swiglu(s.data(), g.data(), u.data(), 3);
  for (int j = 0; j < 3; ++j) CHECK(s[j] == doctest::Approx(g[j] / (1 + std::exp(-g[j])) * u[j]));

  std::vector<float> p{1000.0f, 1001.0f, 999.0f};  // large values: must not overflow
  softmax(p.data(), 3);
  const double e0 = std::exp(-1.0), e2 = std::exp(-2.0), sum = e0 + 1 + e2;
  CHECK(p[0] == doctest::Approx(e0 / sum));
  CHECK(p[1] == doctest::Approx(1 / sum));
  CHECK(p[2] == doctest::Approx(e2 / sum));
}

TEST_CASE("kernels: the exact (fp32) path matches its scalar reference and a float dot of dequantised rows") {
  const Kernels* simd = avx2_exact_kernels();
  std::mt19937 rng(6);
  for (GgmlType type : kAllTypes) {
    CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
    RandomMatrix w(type, 4, 576, rng);
    auto x = random_vector(576, rng);
    std::vector<float> row(576);
    for (int r = 0; r < 4; ++r) {
      dequantize_row(w.m, r, row.data());
      double want = 0, magnitude = 0;
      for (int j = 0; j < 576; ++j) {
        want += static_cast<double>(row[j]) * x[j];
        magnitude += std::fabs(row[j] * x[j]);
      }
      REQUIRE(std::fabs(scalar_exact_kernels().dot(w.m, r, x.data(), nullptr) - want) <= 1e-6 * magnitude + 1e-6);
      if (simd) REQUIRE(std::fabs(simd->dot(w.m, r, x.data(), nullptr) - want) <= 1e-6 * magnitude + 1e-6);
    }
  }
}

// The tensor-parallel invariant of kernels.hpp: a row split by columns at multiples of kChunk, its shards' double
// partials added and rounded once, gives the float of the unsplit dot product.
TEST_CASE("kernels: dot products are invariant to column splits at multiples of 64, for every kernel and type") {
  std::mt19937 rng(7);
  for (const Kernels* k : all_kernel_sets()) {
    const std::string name = k->name;
    const bool quantised_acts = k->quantize_q8 != nullptr;
    int n_cases = 0, n_equal = 0, n_float_cases = 0, n_float_equal = 0;
    for (GgmlType type : kAllTypes) {
      CAPTURE(name);
      CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
      for (int64_t cols : {576, 608, 1536}) {  // 608: 19 blocks, the last chunk a half one
        CAPTURE(cols);
        const int n_rows = 8;
        RandomMatrix w(type, n_rows, cols, rng);
        auto x = random_vector(cols, rng);
        std::vector<BlockQ8> xq(cols / kQBlock);
        scalar_kernels().quantize_q8(x.data(), xq.data(), cols);
        // The partial dot product of row r over columns [c0, c1).
        auto part = [&](int64_t r, int64_t c0, int64_t c1) {
          const BlockQ8* xq_part = quantised_acts ? xq.data() + c0 / kQBlock : nullptr;
          return k->dot(column_slice(w.m, c0, c1), r, x.data() + c0, xq_part);
        };
        // The same split with float accumulation across chunks, as the kernels did before: the sum over each part
        // in float, chained term by term from the part's start. Splitting changes where the float chain restarts,
        // so this differs from the unsplit sum in a sizeable share of cases, which is what the check below would
        // catch (and did: greedy tokens changed with the shard count).
        std::vector<float> row(cols);
        auto float_part = [&](int64_t c0, int64_t c1) {
          float s = 0;
          for (int64_t j = c0; j < c1; ++j) s += row[j] * x[j];
          return s;
        };
        const int n_cases_before = n_cases, n_equal_before = n_equal;
        for (int r = 0; r < n_rows; ++r) {
          dequantize_row(w.m, r, row.data());
          const float whole = static_cast<float>(k->dot(w.m, r, x.data(), quantised_acts ? xq.data() : nullptr));
          const float float_whole = float_part(0, cols);
          for (int64_t c1 = kChunk; c1 < cols; c1 += kChunk) {
            ++n_cases;  // two shards
            n_equal += static_cast<float>(part(r, 0, c1) + part(r, c1, cols)) == whole;
            ++n_float_cases;
            n_float_equal += static_cast<float>(static_cast<double>(float_part(0, c1)) + float_part(c1, cols)) ==
                             float_whole;
            for (int64_t c2 = c1 + kChunk; c2 < cols; c2 += kChunk) {
              ++n_cases;  // three shards, added in order as the coordinator does
              n_equal += static_cast<float>(part(r, 0, c1) + part(r, c1, c2) + part(r, c2, cols)) == whole;
            }
          }
        }
        REQUIRE(n_equal - n_equal_before >= 0.999 * (n_cases - n_cases_before));
      }
    }
    MESSAGE(name << ": " << n_equal << " of " << n_cases << " splits give the unsplit float (with float accumulation "
                 << "across chunks: " << n_float_equal << " of " << n_float_cases << ")");
    CHECK(n_float_equal < 0.99 * n_float_cases);  // the check can fail: float accumulation breaks the invariant
  }
}

TEST_CASE("kernels: matmul_partial over column shards, added in double and rounded once, equals matmul") {
  std::mt19937 rng(8);
  for (GgmlType type : {GgmlType::q4_1, GgmlType::q8_0, GgmlType::f32}) {
    CAPTURE(ggml_type_name(static_cast<uint32_t>(type)));
    const int n_rows = 16, n_tokens = 3;
    const int64_t cols = 1536, cut[] = {0, 448, 1024, cols};  // three shards at multiples of 64
    RandomMatrix w(type, n_rows, cols, rng);
    auto x = random_vector(n_tokens * cols, rng);
    std::vector<BlockQ8> xq(n_tokens * cols / kQBlock);
    kernels().quantize_q8(x.data(), xq.data(), n_tokens * cols);
    std::vector<float> want(n_tokens * n_rows);
    matmul(w.m, x.data(), xq.data(), want.data(), n_tokens, 0, n_rows);

    std::vector<double> sum(n_tokens * n_rows, 0.0), part(n_tokens * n_rows);
    for (int s = 0; s < 3; ++s) {
      // A shard holds its own columns of the activations, (n_tokens, cut[s+1] - cut[s]), quantised the same way.
      const int64_t n = cut[s + 1] - cut[s];
      std::vector<float> xs(n_tokens * n);
      std::vector<BlockQ8> xqs(n_tokens * n / kQBlock);
      for (int t = 0; t < n_tokens; ++t) {
        std::copy_n(&x[t * cols + cut[s]], n, &xs[t * n]);
        std::copy_n(&xq[(t * cols + cut[s]) / kQBlock], n / kQBlock, &xqs[t * n / kQBlock]);
      }
      matmul_partial(column_slice(w.m, cut[s], cut[s + 1]), xs.data(), xqs.data(), part.data(), n_tokens, 0, n_rows);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    }
    int n_equal = 0;
    for (size_t i = 0; i < sum.size(); ++i) n_equal += static_cast<float>(sum[i]) == want[i];
    CHECK(n_equal == static_cast<int>(sum.size()));
  }
}

TEST_CASE("kernels: expf_poly is within 2 ulp of exp over softmax's range and underflows to 0") {
  int worst = 0;
  for (float x = -87.0f; x <= 10.0f; x += 0.0137f) {
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    const int ulps = std::abs(static_cast<int>(f32_to_bits(expf_poly(x))) - static_cast<int>(f32_to_bits(want)));
    worst = std::max(worst, ulps);
  }
  MESSAGE("expf_poly: worst error " << worst << " ulp");
  CHECK(worst <= 2);
  CHECK(expf_poly(0.0f) == 1.0f);
  CHECK(expf_poly(-100.0f) == 0.0f);
  CHECK(expf_poly(-1e30f) == 0.0f);
}

TEST_CASE("kernels: SIMD attention steps and softmax equal the scalar references bit for bit") {
  const AttnKernels* simd = avx2_attn_kernels();
  if (!simd) return;
  const AttnKernels ref = scalar_attn_kernels();
  std::mt19937 rng(10);
  for (int head_dim : {64, 128, 40, 12}) {  // 12: not a multiple of 8, the SIMD set falls back to the reference
    CAPTURE(head_dim);
    for (int n : {1, 7, 8, 33, 200}) {
      CAPTURE(n);
      const int64_t stride = 3 * head_dim + 8;  // rows of a cache holding several heads
      auto q = random_vector(head_dim, rng, 1.0f);
      auto kf = random_vector(n * stride, rng, 1.0f);
      std::vector<uint16_t> kh(kf.size());
      for (size_t i = 0; i < kf.size(); ++i) kh[i] = f32_to_fp16(kf[i]);
      std::vector<float> a(n), b(n);
      ref.scores_f16(q.data(), kh.data(), stride, n, head_dim, 0.125f, a.data());
      simd->scores_f16(q.data(), kh.data(), stride, n, head_dim, 0.125f, b.data());
      REQUIRE(a == b);
      ref.scores_f32(q.data(), kf.data(), stride, n, head_dim, 0.125f, a.data());
      simd->scores_f32(q.data(), kf.data(), stride, n, head_dim, 0.125f, b.data());
      REQUIRE(a == b);
      // against a double-precision dot product
      for (int j = 0; j < n; ++j) {
        double want = 0, mag = 0;
        for (int d = 0; d < head_dim; ++d) {
          want += static_cast<double>(q[d]) * kf[j * stride + d];
          mag += std::fabs(q[d] * kf[j * stride + d]);
        }
        REQUIRE(std::fabs(a[j] - 0.125 * want) <= 1e-6 * mag + 1e-7);
      }
      auto sa = a, sb = a;
      ref.softmax(sa.data(), n);
      simd->softmax(sb.data(), n);
      REQUIRE(sa == sb);
      double total = 0;
      for (float p : sa) total += p;
      CHECK(total == doctest::Approx(1.0).epsilon(1e-5));
      std::vector<float> oa(head_dim, 0.5f), ob(head_dim, 0.5f);
      ref.accumulate_f16(sa.data(), kh.data(), stride, n, head_dim, oa.data());
      simd->accumulate_f16(sa.data(), kh.data(), stride, n, head_dim, ob.data());
      REQUIRE(oa == ob);
      // in pieces (as the paged cache is read) the same as whole
      std::vector<float> oc(head_dim, 0.5f);
      for (int j0 = 0; j0 < n; j0 += 16) {
        simd->accumulate_f16(sa.data() + j0, kh.data() + j0 * stride, stride, std::min(16, n - j0), head_dim, oc.data());
      }
      REQUIRE(oc == ob);
      ref.accumulate_f32(sa.data(), kf.data(), stride, n, head_dim, oa.data());
      simd->accumulate_f32(sa.data(), kf.data(), stride, n, head_dim, ob.data());
      REQUIRE(oa == ob);
    }
  }
}
