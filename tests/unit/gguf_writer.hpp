// gguf_writer.hpp: builds GGUF byte images in memory for the loader's tests (and the fuzzer's seed corpus).
//
//   GgufWriter w;                                   // v3, "GGUF" magic, alignment 32
//   w.add("general.architecture", gv::str("llama"));
//   w.add("tokens", gv::arr(GgufValueType::string, {gv::str("a"), gv::str("b")}));
//   w.tensor("tok", {64, 2}, 0 /* f32 */);          // data laid out after the infos, aligned, filled with a pattern
//   std::vector<uint8_t> bytes = w.build();
//
// Knobs to corrupt a file: magic, version, n_tensors / n_kv overrides (lie about the counts), alignment (the padding
// used for layout, separate from any general.alignment key), per-tensor n_dims / offset / data size overrides,
// gv::raw (a value with any type id and any payload), gv::arr_n (an array whose count lies), gv::str_n (a string
// whose length lies). Values are encoded as their payload bytes; a key/value is its key, type id, payload.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "gguf.hpp"

namespace troupe::test {

// ---- little-endian encoding ----
inline void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  if (n == 0) return;
  const size_t at = out.size();
  out.resize(at + n);
  std::memcpy(out.data() + at, p, n);
}
template <class T>
inline void put(std::vector<uint8_t>& out, T v) {
  put_bytes(out, &v, sizeof v);  // the tests run on little-endian machines, as GGUF is little-endian
}
inline void put_string(std::vector<uint8_t>& out, const std::string& s, std::optional<uint64_t> len = {}) {
  put<uint64_t>(out, len ? *len : s.size());
  put_bytes(out, s.data(), s.size());
}

// ---- metadata values: a type id and the encoded payload ----
struct GVal {
  uint32_t type = 0;
  std::vector<uint8_t> payload;
};

namespace gv {
template <class T>
inline GVal scalar(GgufValueType t, T v) {
  GVal g{static_cast<uint32_t>(t), {}};
  put(g.payload, v);
  return g;
}
inline GVal u8(uint8_t v) { return scalar(GgufValueType::u8, v); }
inline GVal i8(int8_t v) { return scalar(GgufValueType::i8, v); }
inline GVal u16(uint16_t v) { return scalar(GgufValueType::u16, v); }
inline GVal i16(int16_t v) { return scalar(GgufValueType::i16, v); }
inline GVal u32(uint32_t v) { return scalar(GgufValueType::u32, v); }
inline GVal i32(int32_t v) { return scalar(GgufValueType::i32, v); }
inline GVal u64(uint64_t v) { return scalar(GgufValueType::u64, v); }
inline GVal i64(int64_t v) { return scalar(GgufValueType::i64, v); }
inline GVal f32(float v) { return scalar(GgufValueType::f32, v); }
inline GVal f64(double v) { return scalar(GgufValueType::f64, v); }
inline GVal boolean(bool v) { return scalar(GgufValueType::boolean, static_cast<uint8_t>(v)); }
// A bool whose byte is anything (2..255 are invalid).
inline GVal bool_byte(uint8_t b) { return scalar(GgufValueType::boolean, b); }
inline GVal str(const std::string& s) {
  GVal g{static_cast<uint32_t>(GgufValueType::string), {}};
  put_string(g.payload, s);
  return g;
}
// A string whose length field says len but whose bytes are s.
inline GVal str_n(uint64_t len, const std::string& s) {
  GVal g{static_cast<uint32_t>(GgufValueType::string), {}};
  put_string(g.payload, s, len);
  return g;
}
// An array whose element type is elem_type and count field says count; the items' payloads follow as given.
inline GVal arr_n(uint32_t elem_type, uint64_t count, const std::vector<GVal>& items) {
  GVal g{static_cast<uint32_t>(GgufValueType::array), {}};
  put<uint32_t>(g.payload, elem_type);
  put<uint64_t>(g.payload, count);
  for (const auto& it : items) put_bytes(g.payload, it.payload.data(), it.payload.size());
  return g;
}
inline GVal arr(GgufValueType elem_type, const std::vector<GVal>& items) {
  return arr_n(static_cast<uint32_t>(elem_type), items.size(), items);
}
// Any type id with any payload.
inline GVal raw(uint32_t type, std::vector<uint8_t> payload) { return GVal{type, std::move(payload)}; }
}  // namespace gv

// Bytes per element row for the types the writer knows how to size (block types count whole blocks).
inline std::optional<uint64_t> ggml_bytes(uint32_t type, const std::vector<uint64_t>& dims) {
  uint64_t elems = 1;
  for (uint64_t d : dims) {
    if (__builtin_mul_overflow(elems, d, &elems)) return std::nullopt;
  }
  uint64_t be = 1, bb = 1;
  switch (type) {
    case 0: bb = 4; break;                   // f32
    case 1: case 30: bb = 2; break;          // f16, bf16
    case 2: be = 32; bb = 18; break;         // q4_0
    case 3: be = 32; bb = 20; break;         // q4_1
    case 8: be = 32; bb = 34; break;         // q8_0
    default: bb = 1; break;                  // anything else: a byte per element, for layout only
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(elems / be, bb, &bytes)) return std::nullopt;
  return bytes;
}

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  std::optional<uint32_t> n_dims;      // written instead of dims.size()
  std::optional<uint64_t> offset;      // written instead of the computed offset
  std::optional<uint64_t> data_bytes;  // bytes reserved in the data section (default: the real size; 0 if huge)
};

class GgufWriter {
 public:
  static constexpr uint32_t kMagic = 0x46554747;

  uint32_t magic = kMagic;
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors;  // written instead of the number of tensors added
  std::optional<uint64_t> n_kv;       // written instead of the number of key/values added
  uint64_t alignment = 32;            // layout of the data section (set general.alignment separately)

  GgufWriter& add(const std::string& key, const GVal& v) {
    put_string(kv_, key);
    put<uint32_t>(kv_, v.type);
    put_bytes(kv_, v.payload.data(), v.payload.size());
    ++kv_count_;
    return *this;
  }
  // A key whose length field lies.
  GgufWriter& add_key_n(uint64_t len, const std::string& key, const GVal& v) {
    put_string(kv_, key, len);
    put<uint32_t>(kv_, v.type);
    put_bytes(kv_, v.payload.data(), v.payload.size());
    ++kv_count_;
    return *this;
  }

  TensorSpec& tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type) {
    tensors_.push_back(TensorSpec{name, std::move(dims), type, {}, {}, {}});
    return tensors_.back();
  }

  // The fill byte of the data section at position k (relative to the data start).
  static uint8_t pattern(uint64_t k) { return static_cast<uint8_t>((k * 131 + 7) ^ (k >> 8)); }

  // Offsets the tensors get when none is overridden: each one aligned after the previous one.
  std::vector<uint64_t> layout(uint64_t* data_size = nullptr) const {
    std::vector<uint64_t> offs;
    uint64_t at = 0;
    for (const auto& t : tensors_) {
      at = align_up(at);
      offs.push_back(at);
      at += reserved(t);
    }
    if (data_size) *data_size = at;
    return offs;
  }

  // The data section starts at this byte of the built file.
  uint64_t data_offset() const { return align_up(header_and_infos().size()); }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out = header_and_infos();
    uint64_t data_size = 0;
    layout(&data_size);
    out.resize(align_up(out.size()), 0);
    const size_t data_start = out.size();
    out.resize(data_start + data_size);
    for (uint64_t k = 0; k < data_size; ++k) out[data_start + k] = pattern(k);
    return out;
  }

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  TensorSpec& tensor_at(size_t k) { return tensors_.at(k); }

 private:
  uint64_t align_up(uint64_t x) const { return alignment ? (x + alignment - 1) / alignment * alignment : x; }

  static uint64_t reserved(const TensorSpec& t) {
    if (t.data_bytes) return *t.data_bytes;
    auto b = ggml_bytes(t.type, t.dims);
    return b && *b <= (1u << 20) ? *b : 0;
  }

  std::vector<uint8_t> header_and_infos() const {
    std::vector<uint8_t> out;
    put<uint32_t>(out, magic);
    put<uint32_t>(out, version);
    put<uint64_t>(out, n_tensors ? *n_tensors : tensors_.size());
    put<uint64_t>(out, n_kv ? *n_kv : kv_count_);
    put_bytes(out, kv_.data(), kv_.size());
    std::vector<uint64_t> offs = layout();
    for (size_t k = 0; k < tensors_.size(); ++k) {
      const TensorSpec& t = tensors_[k];
      put_string(out, t.name);
      put<uint32_t>(out, t.n_dims ? *t.n_dims : static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out, t.offset ? *t.offset : offs[k]);
    }
    return out;
  }

  std::vector<uint8_t> kv_;
  uint64_t kv_count_ = 0;
  std::vector<TensorSpec> tensors_;
};

}  // namespace troupe::test
