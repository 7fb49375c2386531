// gguf.hpp: a checked reader for GGUF model files (versions 2 and 3).
//
// The file is untrusted input. Every count, length, offset, shape, type id and the alignment is checked with
// overflow-safe arithmetic against the file size before anything is allocated or read, so a malformed file yields an
// Error naming what is wrong, never a crash or a huge allocation. Tensor data stays in the read-only memory mapping.
//
//   GgufFile::open(path)        map a file and parse it
//   GgufFile::parse(bytes)      parse an in-memory copy (tests, fuzzer)
//   file.find(key)              a metadata value, or nullptr
//   file.tensor(name)           a tensor's info and data pointer, or nullptr
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "error.hpp"

namespace troupe {

// ---- tensor element types (ids as ggml numbers them) ----
enum class GgmlType : uint32_t { f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q8_0 = 8, bf16 = 30 };

struct GgmlTypeTraits {
  const char* name;     // "q4_1"
  int64_t block_elems;  // elements per block (1 for float types)
  int64_t block_bytes;  // bytes per block
};

// Traits of a type id read from a file; nullptr when Troupe does not support it.
const GgmlTypeTraits* ggml_type_traits(uint32_t type_id);
// A name for any ggml type id, supported or not, for error messages ("q6_k", "type 99").
std::string ggml_type_name(uint32_t type_id);

// ---- metadata values ----
enum class GgufValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
  u64 = 10, i64 = 11, f64 = 12,
};
const char* to_string(GgufValueType type);

struct GgufValue {
  GgufValueType type = GgufValueType::u8;
  uint64_t u = 0;                // unsigned integers and booleans
  int64_t i = 0;                 // signed integers
  double f = 0;                  // f32, f64
  std::string s;                 // string
  GgufValueType elem_type = GgufValueType::u8;  // array: type of the elements
  std::vector<GgufValue> items;  // array: the elements

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::f32 || type == GgufValueType::f64; }
  // Integer value as int64 (false when not an integer or out of range).
  bool as_int(int64_t& out) const;
  // A short rendering for `troupe inspect` (arrays are abbreviated).
  std::string to_display(size_t max_items = 8) const;
};

// ---- tensors ----
struct GgufTensor {
  std::string name;
  uint32_t type_id = 0;
  const GgmlTypeTraits* traits = nullptr;
  std::vector<int64_t> dims;  // ne[0] is the contiguous (row) dimension, as in ggml
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;

  int64_t n_elements() const;
  int64_t rows() const;  // product of dims[1..]
  int64_t row_bytes() const { return dims[0] / traits->block_elems * traits->block_bytes; }
};

class GgufFile {
 public:
  static Expected<std::shared_ptr<const GgufFile>> open(const std::string& path);
  static Expected<std::shared_ptr<const GgufFile>> parse(std::vector<uint8_t> bytes);

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  const std::string& path() const { return path_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  const GgufValue* find(const std::string& key) const;
  const GgufTensor* tensor(const std::string& name) const;

  // Typed accessors: an Error names the key when it is missing or of the wrong type.
  Expected<int64_t> get_int(const std::string& key) const;
  Expected<double> get_float(const std::string& key) const;  // accepts integer values too
  Expected<std::string> get_string(const std::string& key) const;
  Expected<const GgufValue*> get_array(const std::string& key, GgufValueType elem_type) const;

 private:
  GgufFile() = default;
  friend class GgufParser;

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;     // mmap'ed region (open) ...
  std::vector<uint8_t> owned_;  // ... or an owned copy (parse)

  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;  // in file order
  std::map<std::string, size_t> metadata_index_;
  std::vector<GgufTensor> tensors_;  // in file order
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace troupe
