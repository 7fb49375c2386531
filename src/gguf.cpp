// gguf.cpp: parsing of GGUF files. See gguf.hpp for the contract; the checks follow the file's layout:
// header, metadata key/values, tensor infos, alignment padding, tensor data.
#include "gguf.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>

namespace troupe {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as little-endian u32
constexpr int kMaxArrayDepth = 4;         // nested arrays deeper than this are refused
constexpr uint64_t kMaxStringBytes = 1ull << 24;
constexpr uint64_t kMaxAlignment = 1ull << 20;
constexpr uint32_t kMaxDims = 4;
// All metadata arrays together hold at most this many elements (a large vocabulary with its scores, types and
// merges is about a million).
constexpr uint64_t kMaxArrayElements = 1ull << 23;

const GgmlTypeTraits kF32{"f32", 1, 4};
const GgmlTypeTraits kF16{"f16", 1, 2};
const GgmlTypeTraits kBF16{"bf16", 1, 2};
const GgmlTypeTraits kQ4_0{"q4_0", 32, 18};
const GgmlTypeTraits kQ4_1{"q4_1", 32, 20};
const GgmlTypeTraits kQ8_0{"q8_0", 32, 34};

// Overflow-checked arithmetic on sizes: false when the result does not fit.
bool add_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

struct ParseError {
  std::string message;
};

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type_id) {
  switch (type_id) {
    case 0: return &kF32;
    case 1: return &kF16;
    case 2: return &kQ4_0;
    case 3: return &kQ4_1;
    case 8: return &kQ8_0;
    case 30: return &kBF16;
    default: return nullptr;
  }
}

std::string ggml_type_name(uint32_t type_id) {
  static const char* const names[] = {
      "f32", "f16", "q4_0", "q4_1", "q4_2", "q4_3", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k", "q3_k",
      "q4_k", "q5_k", "q6_k", "q8_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s",
      "iq4_xs", "i8", "i16", "i32", "i64", "f64", "iq1_m", "bf16", "q4_0_4_4", "q4_0_4_8", "q4_0_8_8",
      "tq1_0", "tq2_0", "iq4_nl_4_4", "iq4_nl_4_8", "iq4_nl_8_8", "mxfp4"};
  if (type_id < sizeof(names) / sizeof(names[0])) return names[type_id];
  return "type " + std::to_string(type_id);
}

const char* to_string(GgufValueType type) {
  switch (type) {
    case GgufValueType::u8: return "u8";
    case GgufValueType::i8: return "i8";
    case GgufValueType::u16: return "u16";
    case GgufValueType::i16: return "i16";
    case GgufValueType::u32: return "u32";
    case GgufValueType::i32: return "i32";
    case GgufValueType::f32: return "f32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::u64: return "u64";
    case GgufValueType::i64: return "i64";
    case GgufValueType::f64: return "f64";
  }
  return "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::u8: case GgufValueType::u16: case GgufValueType::u32: case GgufValueType::u64:
    case GgufValueType::i8: case GgufValueType::i16: case GgufValueType::i32: case GgufValueType::i64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::as_int(int64_t& out) const {
  switch (type) {
    case GgufValueType::u8: case GgufValueType::u16: case GgufValueType::u32: case GgufValueType::u64:
      if (u > static_cast<uint64_t>(INT64_MAX)) return false;
      out = static_cast<int64_t>(u);
      return true;
    case GgufValueType::i8: case GgufValueType::i16: case GgufValueType::i32: case GgufValueType::i64:
      out = i;
      return true;
    default:
      return false;
  }
}

std::string GgufValue::to_display(size_t max_items) const {
  std::ostringstream os;
  switch (type) {
    case GgufValueType::u8: case GgufValueType::u16: case GgufValueType::u32: case GgufValueType::u64:
      os << u; break;
    case GgufValueType::i8: case GgufValueType::i16: case GgufValueType::i32: case GgufValueType::i64:
      os << i; break;
    case GgufValueType::f32: case GgufValueType::f64: os << f; break;
    case GgufValueType::boolean: os << (u ? "true" : "false"); break;
    case GgufValueType::string: {
      // One line whatever the string holds: control characters escaped, long strings cut on a UTF-8 boundary.
      size_t cut = s.size();
      if (cut > 120) {
        cut = 120;
        while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
      }
      os << '"';
      for (size_t k = 0; k < cut; ++k) {
        unsigned char c = static_cast<unsigned char>(s[k]);
        if (c == '\n') os << "\\n";
        else if (c == '\r') os << "\\r";
        else if (c == '\t') os << "\\t";
        else if (c == '"') os << "\\\"";
        else if (c == '\\') os << "\\\\";
        else if (c < 0x20 || c == 0x7f) {
          static const char hex[] = "0123456789abcdef";
          os << "\\x" << hex[c >> 4] << hex[c & 15];
        } else {
          os << static_cast<char>(c);
        }
      }
      os << '"';
      if (cut < s.size()) os << "...";
      break;
    }
    case GgufValueType::array: {
      os << "[" << to_string(elem_type) << " x " << items.size() << "]";
      if (!items.empty()) {
        os << " ";
        for (size_t k = 0; k < items.size() && k < max_items; ++k) os << (k ? ", " : "") << items[k].to_display(3);
        if (items.size() > max_items) os << ", ...";
      }
      break;
    }
  }
  return os.str();
}

int64_t GgufTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // bounded at load time
  return n;
}

int64_t GgufTensor::rows() const {
  int64_t n = 1;
  for (size_t k = 1; k < dims.size(); ++k) n *= dims[k];
  return n;
}

// ---- the parser: a cursor over [base, base + size) that throws ParseError on any violation ----
//
// Error messages name the item being read through ctx_ ("metadata 'general.name'", "tensor 'output.weight'"), set
// once per item, so that no string is built per array element (a long key and a long array would otherwise cost
// quadratic time). Names from the file are quoted with control characters escaped and long names cut, so every
// message stays one short line.
class GgufParser {
 public:
  GgufParser(const uint8_t* base, size_t size) : base_(base), size_(size) {}

  // Parses the bytes the file points at into it.
  static void run_on(GgufFile& file) { GgufParser(file.base_, file.size_).run(file); }

  void run(GgufFile& file) {
    ctx_.clear();  // header fields need no context
    uint32_t magic = read_u32("magic");
    if (magic != kMagic) fail("bad magic: not a GGUF file");
    file.version_ = read_u32("version");
    if (file.version_ == 0x02000000 || file.version_ == 0x03000000) fail("big-endian GGUF files are not supported");
    if (file.version_ != 2 && file.version_ != 3) {
      fail("unsupported GGUF version " + std::to_string(file.version_) + " (2 and 3 are supported)");
    }
    uint64_t n_tensors = read_u64("tensor count");
    uint64_t n_kv = read_u64("metadata count");
    // Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8+4+8+4+8.
    check_count(n_kv, 13, "metadata count");
    check_count(n_tensors, 32, "tensor count");
    uint64_t both;
    if (!add_ok(n_kv * 13, n_tensors * 32, both) || both > remaining()) {
      fail("metadata count " + std::to_string(n_kv) + " and tensor count " + std::to_string(n_tensors) +
           " are larger than the file can hold (truncated or corrupt)");
    }

    for (uint64_t k = 0; k < n_kv; ++k) {
      ctx_ = "metadata entry " + std::to_string(k);
      std::string key = read_string("key");
      if (key.empty()) fail("empty metadata key (entry " + std::to_string(k) + ")");
      ctx_ = "metadata " + quote(key);
      GgufValue value = read_value(read_type("type"), 0);
      if (file.metadata_index_.count(key)) fail("duplicate metadata key " + quote(key));
      file.metadata_index_[key] = file.metadata_.size();
      file.metadata_.emplace_back(std::move(key), std::move(value));
    }

    if (auto it = file.metadata_index_.find("general.alignment"); it != file.metadata_index_.end()) {
      const GgufValue& v = file.metadata_[it->second].second;
      if (v.type != GgufValueType::u32) {
        fail(std::string("metadata 'general.alignment' has type ") + to_string(v.type) + ", expected u32");
      }
      if (v.u == 0 || (v.u & (v.u - 1)) != 0 || v.u > kMaxAlignment) {
        fail("bad general.alignment " + std::to_string(v.u) + " (must be a power of two up to 1 MiB)");
      }
      file.alignment_ = v.u;
    }

    for (uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensor t;
      ctx_ = "tensor " + std::to_string(k);
      t.name = read_string("name");
      if (t.name.empty()) fail("tensor " + std::to_string(k) + " has an empty name");
      ctx_ = "tensor " + quote(t.name);
      uint32_t n_dims = read_u32("dimension count");
      if (n_dims == 0 || n_dims > kMaxDims) {
        fail(ctx_ + " has " + std::to_string(n_dims) + " dimensions (1 to " + std::to_string(kMaxDims) + ")");
      }
      uint64_t n_elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        uint64_t dim = read_u64("dimension");
        if (dim == 0 || dim > static_cast<uint64_t>(INT64_MAX)) {
          fail(ctx_ + " has a bad dimension " + std::to_string(dim) + " (dimension " + std::to_string(d) + ")");
        }
        if (!mul_ok(n_elements, dim, n_elements) || n_elements > static_cast<uint64_t>(INT64_MAX)) {
          fail(ctx_ + ": element count overflows");
        }
        t.dims.push_back(static_cast<int64_t>(dim));
      }
      t.type_id = read_u32("type");
      t.traits = ggml_type_traits(t.type_id);
      if (!t.traits) fail(ctx_ + " has unsupported type " + ggml_type_name(t.type_id));
      if (t.dims[0] % t.traits->block_elems != 0) {
        fail(ctx_ + ": row length " + std::to_string(t.dims[0]) + " is not a multiple of the " + t.traits->name +
             " block size " + std::to_string(t.traits->block_elems));
      }
      uint64_t n_blocks = n_elements / static_cast<uint64_t>(t.traits->block_elems);
      if (!mul_ok(n_blocks, static_cast<uint64_t>(t.traits->block_bytes), t.n_bytes) ||
          t.n_bytes > static_cast<uint64_t>(INT64_MAX)) {
        fail(ctx_ + ": byte size overflows");
      }
      t.offset = read_u64("offset");
      if (t.offset % file.alignment_ != 0) {
        fail(ctx_ + ": offset " + std::to_string(t.offset) + " is not aligned to " + std::to_string(file.alignment_));
      }
      if (file.tensor_index_.count(t.name)) fail("duplicate tensor name " + quote(t.name));
      file.tensor_index_[t.name] = file.tensors_.size();
      file.tensors_.push_back(std::move(t));
    }

    // Data starts at the next multiple of the alignment.
    uint64_t data = pos_;
    uint64_t rem = data % file.alignment_;
    if (rem && !add_ok(data, file.alignment_ - rem, data)) fail("data offset overflows");
    if (data > size_ && !file.tensors_.empty()) fail("truncated: the tensor data section is missing");
    file.data_offset_ = data;

    // Every tensor lies inside the file; no two overlap.
    std::vector<const GgufTensor*> by_offset;
    by_offset.reserve(file.tensors_.size());
    for (auto& t : file.tensors_) {
      uint64_t begin, end;
      if (!add_ok(data, t.offset, begin) || !add_ok(begin, t.n_bytes, end) || end > size_) {
        fail("tensor " + quote(t.name) + " lies past the end of the file (truncated or bad offset " +
             std::to_string(t.offset) + ")");
      }
      t.data = base_ + begin;
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < by_offset.size(); ++k) {
      // offset + n_bytes <= size_ was checked above, so the sum cannot overflow.
      if (by_offset[k - 1]->offset + by_offset[k - 1]->n_bytes > by_offset[k]->offset) {
        fail("tensors " + quote(by_offset[k - 1]->name) + " and " + quote(by_offset[k]->name) + " overlap");
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& message) { throw ParseError{message}; }

  // A name from the file, quoted for an error message: control characters escaped, at most 64 bytes shown.
  static std::string quote(const std::string& name) {
    constexpr size_t kShown = 64;
    std::string out = "'";
    for (size_t k = 0; k < name.size() && k < kShown; ++k) {
      unsigned char c = static_cast<unsigned char>(name[k]);
      if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
        static const char hex[] = "0123456789abcdef";
        out += "\\x";
        out += hex[c >> 4];
        out += hex[c & 15];
      } else {
        out += static_cast<char>(c);
      }
    }
    if (name.size() > kShown) out += "...";
    out += "'";
    return out;
  }

  std::string label(const char* field) const { return ctx_.empty() ? std::string(field) : ctx_ + " " + field; }

  size_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const char* field) {
    if (n > remaining()) fail("truncated: file ends inside " + label(field) + " at byte " + std::to_string(pos_));
  }

  // A count of items each at least min_bytes long cannot exceed what is left of the file.
  void check_count(uint64_t count, uint64_t min_bytes, const char* field) {
    uint64_t total;
    if (!mul_ok(count, min_bytes, total) || total > remaining()) {
      fail(label(field) + " " + std::to_string(count) + " is larger than the file can hold (truncated or corrupt)");
    }
  }

  template <class T>
  T read_raw(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint32_t read_u32(const char* field) { return read_raw<uint32_t>(field); }
  uint64_t read_u64(const char* field) { return read_raw<uint64_t>(field); }

  std::string read_string(const char* field) {
    uint64_t n = read_u64(field);
    if (n > kMaxStringBytes) fail(label(field) + " length " + std::to_string(n) + " is too large");
    need(n, field);
    std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return s;
  }

  GgufValueType read_type(const char* field) {
    uint32_t t = read_u32(field);
    if (t > static_cast<uint32_t>(GgufValueType::f64)) {
      fail(label(field) + " " + std::to_string(t) + " is not a GGUF value type");
    }
    return static_cast<GgufValueType>(t);
  }

  static uint64_t min_size(GgufValueType t) {
    switch (t) {
      case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::boolean: return 1;
      case GgufValueType::u16: case GgufValueType::i16: return 2;
      case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::f32: return 4;
      case GgufValueType::string: case GgufValueType::u64: case GgufValueType::i64: case GgufValueType::f64: return 8;
      case GgufValueType::array: return 12;
    }
    return 1;
  }

  GgufValue read_value(GgufValueType type, int depth) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufValueType::u8: v.u = read_raw<uint8_t>("value"); break;
      case GgufValueType::i8: v.i = read_raw<int8_t>("value"); break;
      case GgufValueType::u16: v.u = read_raw<uint16_t>("value"); break;
      case GgufValueType::i16: v.i = read_raw<int16_t>("value"); break;
      case GgufValueType::u32: v.u = read_raw<uint32_t>("value"); break;
      case GgufValueType::i32: v.i = read_raw<int32_t>("value"); break;
      case GgufValueType::u64: v.u = read_raw<uint64_t>("value"); break;
      case GgufValueType::i64: v.i = read_raw<int64_t>("value"); break;
      case GgufValueType::f32: v.f = read_raw<float>("value"); break;
      case GgufValueType::f64: v.f = read_raw<double>("value"); break;
      case GgufValueType::boolean: {
        uint8_t b = read_raw<uint8_t>("value");
        if (b > 1) fail(ctx_ + ": boolean value " + std::to_string(b) + " is neither 0 nor 1");
        v.u = b;
        break;
      }
      case GgufValueType::string: v.s = read_string("string"); break;
      case GgufValueType::array: {
        if (depth >= kMaxArrayDepth) fail(ctx_ + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
        v.elem_type = read_type("array element type");
        uint64_t n = read_u64("array element count");
        check_count(n, min_size(v.elem_type), "array element count");
        // Each element costs sizeof(GgufValue) in memory however small it is in the file: a budget for the whole
        // file keeps a large file of tiny elements from turning into a huge allocation.
        if (n > kMaxArrayElements - array_elements_) {
          fail(ctx_ + ": more than " + std::to_string(kMaxArrayElements) + " array elements in the metadata");
        }
        array_elements_ += n;
        v.items.reserve(n);
        for (uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(v.elem_type, depth + 1));
        break;
      }
      default:
        fail(ctx_ + ": bad value type " + std::to_string(static_cast<uint32_t>(type)));
    }
    return v;
  }

  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  std::string ctx_;              // the item being read, for messages
  uint64_t array_elements_ = 0;  // array elements read so far, all arrays together
};

namespace {

Error model_error(const std::string& path, const std::string& message) {
  return Error{ErrorKind::invalid_model, (path.empty() ? std::string("GGUF") : path) + ": " + message};
}

// Parses the bytes file.base_ and file.size_ point at into file; the error, if any, with what names the file in
// messages. The limits keep every allocation proportionate to the file, but a system short of memory can still refuse
// one: that, too, becomes an error value rather than an exception escaping the loader.
std::optional<Error> parse_into(GgufFile& file, const std::string& what) {
  auto out_of_memory = [&] {
    return Error{ErrorKind::out_of_memory, (what.empty() ? std::string("GGUF") : what) + ": out of memory while loading"};
  };
  try {
    GgufParser::run_on(file);
  } catch (const ParseError& e) {
    return model_error(what, e.message);
  } catch (const std::bad_alloc&) {
    return out_of_memory();
  } catch (const std::length_error&) {
    return out_of_memory();
  }
  return std::nullopt;
}

}  // namespace

Expected<std::shared_ptr<const GgufFile>> GgufFile::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; it is refused below as not a
  // regular file. The flag changes nothing for regular files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return Error{ErrorKind::io, path + ": cannot open: " + std::strerror(errno)};
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error{ErrorKind::io, path + ": not a regular file"};
  }
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* m = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      return Error{ErrorKind::io, path + ": cannot map: " + std::strerror(errno)};
    }
    file->mapping_ = m;
    file->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  if (auto err = parse_into(*file, path)) return *err;
  return std::shared_ptr<const GgufFile>(std::move(file));
}

Expected<std::shared_ptr<const GgufFile>> GgufFile::parse(std::vector<uint8_t> bytes) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->owned_ = std::move(bytes);
  file->base_ = file->owned_.data();
  file->size_ = file->owned_.size();
  if (auto err = parse_into(*file, "")) return *err;
  return std::shared_ptr<const GgufFile>(std::move(file));
}

GgufFile::~GgufFile() {
  if (mapping_) munmap(mapping_, size_);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Expected<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return model_error(path_, "missing metadata '" + key + "'");
  int64_t out;
  if (!v->as_int(out)) {
    return model_error(path_, "metadata '" + key + "' has type " + to_string(v->type) + ", expected an integer");
  }
  return out;
}

Expected<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return model_error(path_, "missing metadata '" + key + "'");
  if (v->is_float()) return v->f;
  int64_t out;
  if (v->as_int(out)) return static_cast<double>(out);
  return model_error(path_, "metadata '" + key + "' has type " + to_string(v->type) + ", expected a number");
}

Expected<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return model_error(path_, "missing metadata '" + key + "'");
  if (v->type != GgufValueType::string) {
    return model_error(path_, "metadata '" + key + "' has type " + to_string(v->type) + ", expected string");
  }
  return v->s;
}

Expected<const GgufValue*> GgufFile::get_array(const std::string& key, GgufValueType elem_type) const {
  const GgufValue* v = find(key);
  if (!v) return model_error(path_, "missing metadata '" + key + "'");
  if (v->type != GgufValueType::array || v->elem_type != elem_type) {
    return model_error(path_, "metadata '" + key + "' is not an array of " + to_string(elem_type));
  }
  return v;
}

}  // namespace troupe
