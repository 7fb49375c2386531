// kv_cache.hpp: the keys and values of one sequence, for every layer: (layer, position, n_head_kv * head_dim).
// Stored as fp16 by default (half the memory of fp32, and llama.cpp's default cache type) or as fp32 for the
// exact-arithmetic mode. The paged cache shared by many sequences builds on the same per-position layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "fp16.hpp"

namespace troupe {

enum class KvType { f16, f32 };

// Rows of keys and values (kv_dim each), stored as fp16 or f32. The memory is allocated without being written, so
// the system commits its pages only as rows are stored: a cache sized for its longest use costs what it holds.
class KvRows {
 public:
  KvRows(size_t n_rows, int kv_dim, KvType type)
      : kv_dim_(kv_dim), type_(type), bytes_(n_rows * kv_dim * (type == KvType::f16 ? 2 : 4)),
        k_(new std::byte[bytes_]), v_(new std::byte[bytes_]) {}  // default-initialised: not touched

  int kv_dim() const { return kv_dim_; }
  KvType type() const { return type_; }
  size_t bytes() const { return 2 * bytes_; }

  void store(size_t row, const float* k, const float* v) {
    if (type_ == KvType::f16) {
      uint16_t* kr = rows<uint16_t>(k_.get()) + row * kv_dim_;
      uint16_t* vr = rows<uint16_t>(v_.get()) + row * kv_dim_;
      for (int d = 0; d < kv_dim_; ++d) {
        kr[d] = f32_to_fp16(k[d]);
        vr[d] = f32_to_fp16(v[d]);
      }
    } else {
      std::memcpy(rows<float>(k_.get()) + row * kv_dim_, k, kv_dim_ * sizeof(float));
      std::memcpy(rows<float>(v_.get()) + row * kv_dim_, v, kv_dim_ * sizeof(float));
    }
  }

  // From `row` on, in the stored element type (uint16_t for f16, float for f32).
  template <class T> const T* k(size_t row) const { return rows<T>(k_.get()) + row * kv_dim_; }
  template <class T> const T* v(size_t row) const { return rows<T>(v_.get()) + row * kv_dim_; }

 private:
  template <class T> static T* rows(std::byte* p) { return reinterpret_cast<T*>(p); }

  int kv_dim_;
  KvType type_;
  size_t bytes_;  // of each of k and v
  std::unique_ptr<std::byte[]> k_, v_;
};

// The keys and values of one sequence, for every layer: rows (layer, position).
class KvCache {
 public:
  KvCache(int n_layer, int n_ctx, int kv_dim, KvType type = KvType::f16)
      : n_ctx_(n_ctx), rows_(static_cast<size_t>(n_layer) * n_ctx, kv_dim, type) {}

  int n_ctx() const { return n_ctx_; }
  int kv_dim() const { return rows_.kv_dim(); }
  KvType type() const { return rows_.type(); }
  size_t bytes() const { return rows_.bytes(); }

  // Writes one position's keys and values (kv_dim each).
  void store(int il, int pos, const float* k, const float* v) { rows_.store(row(il, pos), k, v); }

  // Rows of one layer from position 0, in the stored element type (uint16_t for f16, float for f32).
  template <class T> const T* k(int il) const { return rows_.k<T>(row(il, 0)); }
  template <class T> const T* v(int il) const { return rows_.v<T>(row(il, 0)); }

 private:
  size_t row(int il, int pos) const { return static_cast<size_t>(il) * n_ctx_ + pos; }

  int n_ctx_;
  KvRows rows_;
};

}  // namespace troupe
