// kv_cache.hpp: the keys and values of one sequence, for every layer, stored as fp16 (half the memory of fp32;
// llama.cpp's default cache type too). Contiguous per layer: (layer, position, n_head_kv * head_dim).
// The paged cache shared by many sequences builds on the same per-position layout.
#pragma once

#include <cstdint>
#include <vector>

namespace troupe {

class KvCache {
 public:
  KvCache(int n_layer, int n_ctx, int kv_dim)
      : n_layer_(n_layer), n_ctx_(n_ctx), kv_dim_(kv_dim),
        k_(static_cast<size_t>(n_layer) * n_ctx * kv_dim), v_(k_.size()) {}

  int n_ctx() const { return n_ctx_; }
  int kv_dim() const { return kv_dim_; }
  uint16_t* k(int il, int pos) { return k_.data() + (static_cast<size_t>(il) * n_ctx_ + pos) * kv_dim_; }
  uint16_t* v(int il, int pos) { return v_.data() + (static_cast<size_t>(il) * n_ctx_ + pos) * kv_dim_; }
  const uint16_t* k(int il, int pos) const { return k_.data() + (static_cast<size_t>(il) * n_ctx_ + pos) * kv_dim_; }
  const uint16_t* v(int il, int pos) const { return v_.data() + (static_cast<size_t>(il) * n_ctx_ + pos) * kv_dim_; }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(uint16_t); }

 private:
  int n_layer_, n_ctx_, kv_dim_;
  std::vector<uint16_t> k_;  // (n_layer, n_ctx, kv_dim)
  std::vector<uint16_t> v_;  // (n_layer, n_ctx, kv_dim)
};

}  // namespace troupe
