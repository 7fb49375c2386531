// kv_cache.hpp: the keys and values of one sequence, for every layer: (layer, position, n_head_kv * head_dim).
// Stored as fp16 by default (half the memory of fp32, and llama.cpp's default cache type) or as fp32 for the
// exact-arithmetic mode. The paged cache shared by many sequences builds on the same per-position layout.
#pragma once

#include <cstdint>
#include <vector>

#include "fp16.hpp"

namespace troupe {

enum class KvType { f16, f32 };

class KvCache {
 public:
  KvCache(int n_layer, int n_ctx, int kv_dim, KvType type = KvType::f16)
      : n_ctx_(n_ctx), kv_dim_(kv_dim), type_(type) {
    const size_t n = static_cast<size_t>(n_layer) * n_ctx * kv_dim;
    if (type == KvType::f16) {
      k16_.resize(n);
      v16_.resize(n);
    } else {
      k32_.resize(n);
      v32_.resize(n);
    }
  }

  int n_ctx() const { return n_ctx_; }
  int kv_dim() const { return kv_dim_; }
  KvType type() const { return type_; }
  size_t bytes() const { return (k16_.size() + v16_.size()) * 2 + (k32_.size() + v32_.size()) * 4; }

  // Writes one position's keys and values (kv_dim each).
  void store(int il, int pos, const float* k, const float* v) {
    const size_t at = index(il, pos);
    for (int d = 0; d < kv_dim_; ++d) {
      if (type_ == KvType::f16) {
        k16_[at + d] = f32_to_fp16(k[d]);
        v16_[at + d] = f32_to_fp16(v[d]);
      } else {
        k32_[at + d] = k[d];
        v32_[at + d] = v[d];
      }
    }
  }

  // Rows of one layer from position 0, in the stored element type (uint16_t for f16, float for f32).
  template <class T> const T* k(int il) const;
  template <class T> const T* v(int il) const;

 private:
  size_t index(int il, int pos) const { return (static_cast<size_t>(il) * n_ctx_ + pos) * kv_dim_; }

  int n_ctx_, kv_dim_;
  KvType type_;
  std::vector<uint16_t> k16_, v16_;  // (n_layer, n_ctx, kv_dim) when f16
  std::vector<float> k32_, v32_;     // (n_layer, n_ctx, kv_dim) when f32
};

template <> inline const uint16_t* KvCache::k<uint16_t>(int il) const { return k16_.data() + index(il, 0); }
template <> inline const uint16_t* KvCache::v<uint16_t>(int il) const { return v16_.data() + index(il, 0); }
template <> inline const float* KvCache::k<float>(int il) const { return k32_.data() + index(il, 0); }
template <> inline const float* KvCache::v<float>(int il) const { return v32_.data() + index(il, 0); }

}  // namespace troupe
