// synth.cpp: synthetic llama models (see synth.hpp). The file is laid out in full first (metadata, tensor infos,
// offsets), then written in one pass: tensor data is drawn into a large buffer, rows split over a thread team, and
// written out whenever the buffer is full.
#include "synth.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>

#include "fp16.hpp"
#include "kernels.hpp"
#include "thread_team.hpp"
#include "unicode.hpp"

namespace troupe {

namespace {

constexpr uint64_t kAlignment = 32;   // GGUF's default: no general.alignment key needed
constexpr int kNControl = 3;           // <|endoftext|>, <|im_start|>, <|im_end|>
constexpr int kMinVocab = kNControl + 256;
constexpr float kEmbdStd = 0.02f;      // element standard deviation of token_embd and an untied output
// Standard deviation of the log of each token_embd / output row's magnitude. Rows of unequal norm give the logits
// a heavier upper tail, so the top-1 logit stands further above the second: measured on the SmolLM2 shape (8
// prompts, 32 greedy tokens each), the median top-1 margin is 0.18 logit standard deviations with equal rows, 0.32
// with 0.1, 0.41 with 0.2; larger spreads let a few tokens win every step and the greedy text loops on them.
constexpr float kRowSpread = 0.1f;

// ChatML, so that `troupe generate --chat` and the chat endpoints work on a synthetic model.
constexpr const char* kChatTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

Error bad_spec(const std::string& message) { return Error{ErrorKind::invalid_argument, "synth: " + message}; }

// ---- GGUF encoding (little-endian, as the format and the machines we run on) ----

class Encoder {
 public:
  std::vector<uint8_t> bytes;
  uint64_t n_kv = 0;

  template <class T>
  void put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof v);
    std::memcpy(bytes.data() + at, &v, sizeof v);
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void key(const std::string& k, GgufValueType type) {
    put_string(k);
    put<uint32_t>(static_cast<uint32_t>(type));
    ++n_kv;
  }
  void kv_u32(const std::string& k, uint32_t v) { key(k, GgufValueType::u32); put(v); }
  void kv_u64(const std::string& k, uint64_t v) { key(k, GgufValueType::u64); put(v); }
  void kv_f32(const std::string& k, float v) { key(k, GgufValueType::f32); put(v); }
  void kv_bool(const std::string& k, bool v) { key(k, GgufValueType::boolean); put<uint8_t>(v ? 1 : 0); }
  void kv_string(const std::string& k, const std::string& v) { key(k, GgufValueType::string); put_string(v); }
  void kv_strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, GgufValueType::array);
    put<uint32_t>(static_cast<uint32_t>(GgufValueType::string));
    put<uint64_t>(v.size());
    for (const auto& s : v) put_string(s);
  }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, GgufValueType::array);
    put<uint32_t>(static_cast<uint32_t>(GgufValueType::i32));
    put<uint64_t>(v.size());
    for (const int32_t x : v) put(x);
  }
};

uint64_t align_up(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

// ---- the vocabulary ----

struct Vocab {
  std::vector<std::string> tokens;  // (n_vocab)
  std::vector<int32_t> types;       // (n_vocab) tokenizer.ggml.token_type: 1 normal, 3 control
  std::vector<std::string> merges;  // "left right", by rank
};

// Control tokens, the 256 byte tokens, then letter strings in rounds of growing length L: every string of L
// lower-case letters, then "Ġ" (a space) followed by every string of L - 1 letters. Each is made by merging its
// first L - 1 characters (a token of the previous round, or a byte) with its last letter, so every merge joins two
// tokens into a token and the ranks follow the rounds.
Vocab make_vocab(int n_vocab) {
  Vocab v;
  v.tokens.reserve(n_vocab);
  v.types.reserve(n_vocab);
  for (const char* t : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    v.tokens.emplace_back(t);
    v.types.push_back(3);
  }
  for (const uint32_t cp : unicode::byte_to_bpe_char()) {
    std::string s;
    unicode::append_utf8(s, cp);
    v.tokens.push_back(std::move(s));
    v.types.push_back(1);
  }
  const std::string space = v.tokens[kNControl + ' '];  // "Ġ"
  auto add = [&](const std::string& left, char last) {
    v.merges.push_back(left + " " + last);
    v.tokens.push_back(left + last);
    v.types.push_back(1);
  };
  for (int len = 2; static_cast<int>(v.tokens.size()) < n_vocab; ++len) {
    for (int spaced = 0; spaced < 2; ++spaced) {
      const int n_letters = len - spaced;
      int64_t count = 1;
      for (int k = 0; k < n_letters; ++k) count *= 26;
      std::string letters(n_letters, 'a');
      for (int64_t i = 0; i < count && static_cast<int>(v.tokens.size()) < n_vocab; ++i) {
        for (int64_t k = n_letters - 1, rest = i; k >= 0; --k, rest /= 26) {
          letters[k] = static_cast<char>('a' + rest % 26);
        }
        add((spaced ? space : "") + letters.substr(0, n_letters - 1), letters.back());
      }
    }
  }
  return v;
}

// ---- random weights ----

// splitmix64's output function: a bijection of 64-bit integers that mixes every input bit into every output bit.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// One stream of 64-bit values (splitmix64: a counter stepped by an odd constant, then mixed).
struct Rng {
  uint64_t state;
  uint64_t next() { return mix64(state += 0x9e3779b97f4a7c15ull); }
  // uniform in [-1, 1)
  float symmetric() { return static_cast<float>(static_cast<int64_t>(next()) >> 40) * 0x1p-23f; }
};

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

struct TensorPlan {
  std::string name;
  int64_t cols = 0;    // ne[0], the contiguous dimension
  int64_t rows = 1;    // ne[1] (1 for vectors)
  GgmlType type = GgmlType::f32;
  bool norm = false;   // every element `value` (f32)
  float value = 0;     // norm: the weight; matrix: the element standard deviation
  float row_spread = 0;  // standard deviation of the log of a row's magnitude (rows of one scale: 0)
  uint64_t offset = 0;   // in the data section
  uint64_t n_bytes = 0;

  int64_t row_bytes() const {
    const GgmlTypeTraits* t = ggml_type_traits(static_cast<uint32_t>(type));
    return cols / t->block_elems * t->block_bytes;
  }
};

// Standard deviation of a quantised value around its block's centre, and mean square of the block scale factors
// (scales are d0 * (0.5 + k / 15) for k = 0..15, so blocks differ in magnitude as trained weights do).
constexpr double kQ4Rms = 4.6368;   // q - 8 for q uniform in 0..15 (Q4_0; Q4_1's q - 7.5 has 4.6098)
constexpr double kQ8Rms = 73.9004;  // q uniform in -128..127
constexpr double kScaleMs = 1.0944;

// The 32 block scales of a tensor (16 magnitudes, each sign: a block's sign cancels Q4_0's and Q8_0's -0.5 offset),
// as fp16, and Q4_1's matching offsets m = -7.5 d.
struct Scales {
  uint16_t d[32];
  uint16_t m[32];
};

Scales make_scales(double d0) {
  Scales s{};
  for (int k = 0; k < 32; ++k) {
    const float d = static_cast<float>(d0 * (0.5 + (k & 15) / 15.0) * (k & 16 ? -1 : 1));
    s.d[k] = f32_to_fp16(d);
    s.m[k] = f32_to_fp16(-7.5f * fp16_to_f32(s.d[k]));
  }
  return s;
}

Scales scaled(const Scales& s, float factor) {
  Scales out;
  for (int k = 0; k < 32; ++k) {
    out.d[k] = f32_to_fp16(factor * fp16_to_f32(s.d[k]));
    out.m[k] = f32_to_fp16(-7.5f * fp16_to_f32(out.d[k]));
  }
  return out;
}

// Row r of a tensor, drawn from the stream (key, r) into out (row_bytes).
void fill_row(const TensorPlan& t, const Scales& tensor_scales, uint64_t key, int64_t r, uint8_t* out) {
  Rng rng{mix64(key + static_cast<uint64_t>(r) * 0xd1b54a32d192ed03ull)};
  const int64_t nb = t.cols / kQBlock;
  float factor = 1.0f;  // this row's magnitude
  if (t.row_spread > 0) {
    const double u1 = (static_cast<double>(rng.next() >> 11) + 0.5) * 0x1p-53, u2 = (rng.next() >> 11) * 0x1p-53;
    const double normal = std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2);  // Box-Muller
    factor = static_cast<float>(std::exp(t.row_spread * normal));
  }
  const Scales scales = factor == 1.0f ? tensor_scales : scaled(tensor_scales, factor);
  const float a = factor * t.value * std::sqrt(3.0f);  // uniform in [-a, a) has standard deviation factor * value
  switch (t.type) {
    case GgmlType::f32: {
      auto* y = reinterpret_cast<float*>(out);
      for (int64_t j = 0; j < t.cols; ++j) y[j] = t.norm ? t.value : a * rng.symmetric();
      break;
    }
    case GgmlType::f16: {
      auto* y = reinterpret_cast<uint16_t*>(out);
      for (int64_t j = 0; j < t.cols; ++j) y[j] = f32_to_fp16(a * rng.symmetric());
      break;
    }
    case GgmlType::q4_0: {
      auto* b = reinterpret_cast<BlockQ4_0*>(out);
      for (int64_t i = 0; i < nb; ++i) {
        const uint64_t q[2] = {rng.next(), rng.next()};
        b[i].d = scales.d[rng.next() & 31];
        std::memcpy(b[i].qs, q, 16);
      }
      break;
    }
    case GgmlType::q4_1: {
      auto* b = reinterpret_cast<BlockQ4_1*>(out);
      for (int64_t i = 0; i < nb; ++i) {
        const uint64_t q[2] = {rng.next(), rng.next()};
        const unsigned k = rng.next() & 31;
        b[i].d = scales.d[k];
        b[i].m = scales.m[k];
        std::memcpy(b[i].qs, q, 16);
      }
      break;
    }
    case GgmlType::q8_0: {
      auto* b = reinterpret_cast<BlockQ8_0*>(out);
      for (int64_t i = 0; i < nb; ++i) {
        const uint64_t q[4] = {rng.next(), rng.next(), rng.next(), rng.next()};
        b[i].d = scales.d[rng.next() & 31];
        std::memcpy(b[i].qs, q, 32);
      }
      break;
    }
    default: break;  // refused by check_synth_spec
  }
}

Scales tensor_scales(const TensorPlan& t) {
  switch (t.type) {
    case GgmlType::q4_0: case GgmlType::q4_1: return make_scales(t.value / (kQ4Rms * std::sqrt(kScaleMs)));
    case GgmlType::q8_0: return make_scales(t.value / (kQ8Rms * std::sqrt(kScaleMs)));
    default: return Scales{};
  }
}

// ---- the file's layout ----

struct Layout {
  std::vector<uint8_t> head;       // header, metadata, tensor infos, padding: the bytes before the data
  std::vector<TensorPlan> tensors; // in file order, with offsets
  uint64_t data_bytes = 0;         // the data section, its last tensor included
};

std::vector<TensorPlan> plan_tensors(const SynthSpec& s) {
  const int64_t E = s.n_embd, F = s.n_ff, V = s.n_vocab;
  const int64_t kv = static_cast<int64_t>(s.n_embd / s.n_head) * s.n_head_kv;
  auto matrix = [](std::string name, int64_t cols, int64_t rows, GgmlType type, float sd) {
    TensorPlan t;
    t.name = std::move(name);
    t.cols = cols;
    t.rows = rows;
    t.type = type;
    t.value = sd;
    return t;
  };
  auto norm = [](std::string name, int64_t n, float w) {
    TensorPlan t;
    t.name = std::move(name);
    t.cols = n;
    t.norm = true;
    t.value = w;
    return t;
  };
  const float in_e = 1.0f / std::sqrt(static_cast<float>(E)), in_f = 1.0f / std::sqrt(static_cast<float>(F));
  std::vector<TensorPlan> out;
  out.push_back(matrix("token_embd.weight", E, V, s.embd_type, kEmbdStd));
  out.back().row_spread = kRowSpread;
  for (int il = 0; il < s.n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    out.push_back(norm(b + "attn_norm.weight", E, 1.0f));
    out.push_back(matrix(b + "attn_q.weight", E, E, s.weight_type, in_e));
    out.push_back(matrix(b + "attn_k.weight", E, kv, s.weight_type, in_e));
    out.push_back(matrix(b + "attn_v.weight", E, kv, s.weight_type, in_e));
    out.push_back(matrix(b + "attn_output.weight", E, E, s.weight_type, in_e));
    out.push_back(norm(b + "ffn_norm.weight", E, 1.0f));
    out.push_back(matrix(b + "ffn_gate.weight", E, F, s.weight_type, in_e));
    out.push_back(matrix(b + "ffn_up.weight", E, F, s.weight_type, in_e));
    out.push_back(matrix(b + "ffn_down.weight", F, E, s.weight_type, in_f));
  }
  // logits = output . (w * x / rms(x)): with output elements of deviation kEmbdStd, w sets their deviation
  out.push_back(norm("output_norm.weight", E, s.logit_std / (kEmbdStd * std::sqrt(static_cast<float>(E)))));
  if (!s.tied) {
    out.push_back(matrix("output.weight", E, V, s.output_type, kEmbdStd));
    out.back().row_spread = kRowSpread;
  }
  uint64_t at = 0;
  for (auto& t : out) {
    at = align_up(at);
    t.offset = at;
    t.n_bytes = static_cast<uint64_t>(t.row_bytes()) * t.rows;
    at += t.n_bytes;
  }
  return out;
}

Layout make_layout(const SynthSpec& s) {
  Layout layout;
  layout.tensors = plan_tensors(s);
  const TensorPlan& last = layout.tensors.back();
  layout.data_bytes = last.offset + last.n_bytes;

  Encoder kv;
  kv.kv_string("general.architecture", "llama");
  kv.kv_string("general.type", "model");
  kv.kv_string("general.name", "synthetic " + s.name);
  kv.kv_u32("llama.block_count", s.n_layer);
  kv.kv_u32("llama.context_length", s.n_ctx);
  kv.kv_u32("llama.embedding_length", s.n_embd);
  kv.kv_u32("llama.feed_forward_length", s.n_ff);
  kv.kv_u32("llama.attention.head_count", s.n_head);
  kv.kv_u32("llama.attention.head_count_kv", s.n_head_kv);
  kv.kv_f32("llama.rope.freq_base", s.rope_theta);
  kv.kv_f32("llama.attention.layer_norm_rms_epsilon", s.rms_eps);
  kv.kv_u32("llama.vocab_size", s.n_vocab);
  kv.kv_u32("llama.rope.dimension_count", s.n_embd / s.n_head);
  kv.kv_u64("troupe.synth.seed", s.seed);
  const Vocab vocab = make_vocab(s.n_vocab);
  kv.kv_string("tokenizer.ggml.model", "gpt2");
  kv.kv_string("tokenizer.ggml.pre", "smollm");
  kv.kv_strings("tokenizer.ggml.tokens", vocab.tokens);
  kv.kv_i32s("tokenizer.ggml.token_type", vocab.types);
  kv.kv_strings("tokenizer.ggml.merges", vocab.merges);
  kv.kv_u32("tokenizer.ggml.bos_token_id", 1);
  kv.kv_u32("tokenizer.ggml.eos_token_id", 2);
  kv.kv_u32("tokenizer.ggml.padding_token_id", 2);
  kv.kv_bool("tokenizer.ggml.add_bos_token", false);
  kv.kv_string("tokenizer.chat_template", kChatTemplate);

  Encoder head;
  head.put<uint32_t>(0x46554747);  // "GGUF"
  head.put<uint32_t>(3);
  head.put<uint64_t>(layout.tensors.size());
  head.put<uint64_t>(kv.n_kv);
  head.bytes.insert(head.bytes.end(), kv.bytes.begin(), kv.bytes.end());
  for (const auto& t : layout.tensors) {
    head.put_string(t.name);
    head.put<uint32_t>(t.norm ? 1 : 2);
    head.put<uint64_t>(t.cols);
    if (!t.norm) head.put<uint64_t>(t.rows);
    head.put<uint32_t>(static_cast<uint32_t>(t.type));
    head.put<uint64_t>(t.offset);
  }
  head.bytes.resize(align_up(head.bytes.size()), 0);
  layout.head = std::move(head.bytes);
  return layout;
}

// ---- writing ----

// A file written through a large buffer; the first failure is kept and later writes do nothing. Errors name
// `name` (the file the caller asked for, not the temporary one written).
class Sink {
 public:
  Sink(const std::string& path, const std::string& name, size_t capacity) : name_(name), buf_(capacity) {
    file_ = std::fopen(path.c_str(), "wb");
    if (!file_) fail();
  }
  ~Sink() {
    if (file_) std::fclose(file_);
  }
  Sink(const Sink&) = delete;
  Sink& operator=(const Sink&) = delete;

  bool ok() const { return ok_; }
  const Error& error() const { return error_; }
  size_t room() const { return buf_.size() - used_; }
  uint8_t* space() { return buf_.data() + used_; }  // where the next room() bytes go ...
  void commit(size_t n) { used_ += n; }              // ... of which n were written
  void zeros(size_t n) {
    while (n) {
      if (!room()) flush();
      const size_t k = std::min(n, room());
      std::memset(space(), 0, k);
      commit(k);
      n -= k;
    }
  }
  void bytes(const uint8_t* p, size_t n) {
    while (n) {
      if (!room()) flush();
      const size_t k = std::min(n, room());
      std::memcpy(space(), p, k);
      commit(k);
      p += k;
      n -= k;
    }
  }
  void flush() {
    if (ok_ && used_ && std::fwrite(buf_.data(), 1, used_, file_) != used_) fail();
    used_ = 0;
  }
  // Flushes and closes; false (with error()) when anything failed.
  bool close() {
    flush();
    if (file_ && std::fclose(file_) != 0 && ok_) fail();
    file_ = nullptr;
    return ok_;
  }

 private:
  void fail() {
    if (ok_) error_ = Error{ErrorKind::io, name_ + ": " + std::strerror(errno)};
    ok_ = false;
  }
  std::string name_;
  std::FILE* file_ = nullptr;
  std::vector<uint8_t> buf_;
  size_t used_ = 0;
  bool ok_ = true;
  Error error_;
};

constexpr size_t kBufferBytes = 32u << 20;

// Writes a tensor's rows into the sink, as many rows at a time as the buffer holds, the rows split over the team.
void write_tensor(const TensorPlan& t, uint64_t seed, ThreadTeam& team, Sink& sink) {
  const Scales scales = tensor_scales(t);
  const uint64_t key = mix64(seed ^ mix64(fnv1a(t.name)));
  const int64_t row_bytes = t.row_bytes();
  for (int64_t r = 0; r < t.rows && sink.ok();) {
    if (sink.room() < static_cast<size_t>(row_bytes)) sink.flush();
    const int64_t n = std::min<int64_t>(t.rows - r, static_cast<int64_t>(sink.room()) / row_bytes);
    uint8_t* out = sink.space();
    parallel(&team, n, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) fill_row(t, scales, key, r + i, out + i * row_bytes);
    });
    sink.commit(static_cast<size_t>(n * row_bytes));
    r += n;
  }
}

}  // namespace

std::vector<std::string> synth_shape_names() { return {"smollm2-135m", "llama-1b", "llama-8b"}; }

Expected<SynthSpec> synth_shape(const std::string& name) {
  SynthSpec s;  // the defaults are SmolLM2-135M's shape
  s.name = name;
  if (name == "smollm2-135m") return s;
  if (name == "llama-1b" || name == "llama-8b") {  // Llama 3.2 1B, Llama 3.1 8B
    const bool big = name == "llama-8b";
    s.n_vocab = 128256;
    s.n_embd = big ? 4096 : 2048;
    s.n_layer = big ? 32 : 16;
    s.n_head = 32;
    s.n_head_kv = 8;
    s.n_ff = big ? 14336 : 8192;
    s.n_ctx = 131072;
    s.rope_theta = 500000.0f;
    s.tied = !big;
    return s;
  }
  std::string known;
  for (const auto& n : synth_shape_names()) known += (known.empty() ? "" : ", ") + n;
  return bad_spec("unknown shape '" + name + "' (known: " + known + ")");
}

Expected<void> check_synth_spec(const SynthSpec& s) {
  auto range = [](const char* what, int64_t v, int64_t lo, int64_t hi) -> Expected<void> {
    if (v >= lo && v <= hi) return {};
    return bad_spec(std::string(what) + " = " + std::to_string(v) + " is out of range [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
  };
  constexpr int kMaxDim = 1 << 20;  // the loader's limits (model.cpp)
  for (auto ok : {range("n_vocab", s.n_vocab, kMinVocab, 1 << 24), range("n_embd", s.n_embd, 1, kMaxDim),
                  range("n_layer", s.n_layer, 1, 4096), range("n_head", s.n_head, 1, 4096),
                  range("n_head_kv", s.n_head_kv, 1, s.n_head), range("n_ff", s.n_ff, 1, kMaxDim),
                  range("n_ctx", s.n_ctx, 1, 1 << 24)}) {
    if (!ok) return ok;
  }
  if (s.n_embd % s.n_head != 0) {
    return bad_spec("n_embd " + std::to_string(s.n_embd) + " is not a multiple of n_head " + std::to_string(s.n_head));
  }
  if (s.n_head % s.n_head_kv != 0) {
    return bad_spec("n_head " + std::to_string(s.n_head) + " is not a multiple of n_head_kv " +
                    std::to_string(s.n_head_kv));
  }
  if ((s.n_embd / s.n_head) % 2 != 0) {
    return bad_spec("the head size n_embd / n_head = " + std::to_string(s.n_embd / s.n_head) +
                    " is odd (RoPE rotates pairs)");
  }
  if (!(s.rope_theta > 1.0f && s.rope_theta < 1e12f)) return bad_spec("rope_theta must be in (1, 1e12)");
  if (!(s.rms_eps > 0.0f && s.rms_eps < 1.0f)) return bad_spec("rms_eps must be in (0, 1)");
  if (!(s.logit_std > 0.0f && s.logit_std < 1000.0f)) return bad_spec("logit_std must be in (0, 1000)");
  struct Use { const char* what; GgmlType type; bool has_ff; };  // has_ff: ffn_down takes n_ff inputs
  for (const Use u : {Use{"weight", s.weight_type, true}, Use{"embedding", s.embd_type, false},
                      Use{"output", s.output_type, false}}) {
    const GgmlType t = u.type;
    if (t != GgmlType::f32 && t != GgmlType::f16 && t != GgmlType::q4_0 && t != GgmlType::q4_1 && t != GgmlType::q8_0) {
      return bad_spec(std::string("the ") + u.what + " type " + ggml_type_name(static_cast<uint32_t>(t)) +
                      " is not one of f32, f16, q4_0, q4_1, q8_0");
    }
    const bool quantised = t == GgmlType::q4_0 || t == GgmlType::q4_1 || t == GgmlType::q8_0;
    if (!quantised) continue;
    // every matrix's input dimension is n_embd, except ffn_down's n_ff
    if (s.n_embd % kQBlock != 0) {
      return bad_spec("n_embd " + std::to_string(s.n_embd) + " is not a multiple of 32, as " +
                      ggml_type_name(static_cast<uint32_t>(t)) + " " + u.what + "s need");
    }
    if (u.has_ff && s.n_ff % kQBlock != 0) {
      return bad_spec("n_ff " + std::to_string(s.n_ff) + " is not a multiple of 32, as " +
                      ggml_type_name(static_cast<uint32_t>(t)) + " weights need");
    }
  }
  return {};
}

uint64_t synth_file_size(const SynthSpec& spec) {
  if (!check_synth_spec(spec)) return 0;
  const Layout layout = make_layout(spec);
  return layout.head.size() + layout.data_bytes;
}

Expected<void> write_synth_gguf(const SynthSpec& spec, const std::string& path) {
  if (auto ok = check_synth_spec(spec); !ok) return ok;
  const Layout layout = make_layout(spec);
  const std::string tmp = path + ".tmp";
  {
    Sink sink(tmp, path, kBufferBytes);
    ThreadTeam team(static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)));
    sink.bytes(layout.head.data(), layout.head.size());
    uint64_t at = 0;  // in the data section
    for (const auto& t : layout.tensors) {
      sink.zeros(t.offset - at);
      write_tensor(t, spec.seed, team, sink);
      at = t.offset + t.n_bytes;
    }
    if (!sink.close()) {
      std::remove(tmp.c_str());
      return sink.error();
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    Error e{ErrorKind::io, path + ": " + std::strerror(errno)};
    std::remove(tmp.c_str());
    return e;
  }
  return {};
}

}  // namespace troupe
