// wire.hpp: what crosses a process boundary besides CAF's own framing, as plain C++ (no CAF), so it can be tested
// and fuzzed alone. Everything read here came from another process: it is checked before use, never trusted.
//
//   encode_rows / decode_rows   a buffer of float rows (activations (n_tokens, n_embd) or logits (rows, n_vocab)) as
//                               raw bytes behind an explicit 48-byte header; decode checks every header field against
//                               what the receiver expects (from its own plan and its own copy of the step) first
//   encode_partials /           a head group's partial sums (n_tokens, n_embd) as f64 behind the same header, bit for
//   decode_partials             bit: the stage adds them unrounded, so a remote group changes no token
//   check_step                  a step's layout, tokens and logit rows against the limits the worker was attached with
//   sha256_file, hmac, random   the model check and the challenge/response of the attach handshake (OpenSSL)
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"
#include "shard.hpp"

namespace troupe {

// How the numbers of a buffer travel. f16 halves the bytes but rounds: outputs then differ from the in-process path.
// f64 only for partial sums, which are double and must arrive unrounded.
enum class WireDtype : uint8_t { f32 = 0, f16 = 1, f64 = 2 };
enum class WireKind : uint8_t { activations = 1, logits = 2, partials = 3 };

const char* to_string(WireDtype dtype);

// The fixed header in front of every buffer (little-endian, packed by hand, 48 bytes):
//   magic "TRPW" | version u16 | dtype u8 | kind u8 | session u64 | step_id u64 | n_rows u32 | n_cols u32 |
//   payload_bytes u64 | reserved u64 (0)
struct WireHeader {
  WireDtype dtype = WireDtype::f32;
  WireKind kind = WireKind::activations;
  uint64_t session = 0;  // the attach's random token: a buffer from anyone else is refused
  uint64_t step_id = 0;
  uint32_t n_rows = 0;   // tokens (activations, partials) or logit rows
  uint32_t n_cols = 0;   // n_embd (activations, partials) or n_vocab (logits)
};

inline constexpr size_t kWireHeaderBytes = 48;
inline constexpr uint32_t kWireMagic = 0x57505254;  // "TRPW" read as little-endian
inline constexpr uint16_t kWireVersion = 1;

size_t wire_dtype_bytes(WireDtype dtype);

// header + rows (n_rows * n_cols floats) converted to the header's dtype. The bytes are held in a std::string:
// CAF 0.17 deserializes a string after checking that the message holds that many bytes, but resizes a byte
// vector to whatever length the peer claims first (up to 4 GiB) before it notices the message is short.
std::string encode_rows(const WireHeader& header, const float* rows);

// The rows of `bytes` as float, after checking that the header is exactly `expected` (magic, version, kind,
// session, step id, shape) with a known dtype (f32 or f16; with any_dtype either, else the expected one) and that the
// payload has exactly the bytes the shape needs. `out` is resized to n_rows * n_cols. An error names the first field
// that is wrong.
Expected<void> decode_rows(const std::string& bytes, const WireHeader& expected, bool any_dtype,
                           std::vector<float>& out);

// header (kind partials; its dtype is ignored: always f64) + n_rows * n_cols doubles, their bits unchanged.
std::string encode_partials(const WireHeader& header, const double* partials);
// The doubles of `bytes`, checked as decode_rows checks rows, with dtype f64 and kind partials required.
Expected<void> decode_partials(const std::string& bytes, const WireHeader& expected, std::vector<double>& out);

// Counters as 8-byte little-endian numbers (a worker's per-shard counters for /metrics); decode refuses any other
// count than `n`.
std::string encode_u64s(const std::vector<uint64_t>& values);
Expected<void> decode_u64s(const std::string& bytes, size_t n, std::vector<uint64_t>& out);

// Limits a worker holds a step to: those of the plan it was attached with, and its model's.
struct StepLimits {
  int n_vocab = 0;
  int max_tokens = 0;   // tokens per step (the plan's max_batched_tokens)
  int n_blocks = 0;     // KV blocks in each shard's pool
  int block_size = 0;
  int max_context = 0;  // positions per sequence
};

// Whether a step from another process can be run: 1..max_tokens tokens, one token id per token and each in the
// vocabulary, sequences contiguous and in order covering every token, positions inside the context, block tables
// long enough with every id in the pool, logit rows inside the step and increasing.
Expected<void> check_step(const StepLayout& layout, const std::vector<TokenId>& tokens,
                          const std::vector<int>& logit_rows, const StepLimits& limits);

// ---- integrity and authentication (OpenSSL libcrypto) ----

// Size and SHA-256 (lowercase hex) of a file, read in 1 MiB pieces.
struct FileDigest {
  uint64_t size = 0;
  std::string sha256;
};
Expected<FileDigest> digest_file(const std::string& path);

// HMAC-SHA256(key, label || 0 || a || b), 32 bytes: both sides of the handshake compute it over the two nonces.
std::string hmac_sha256(const std::string& key, const std::string& label, const std::string& a, const std::string& b);
// Equal contents in time that does not depend on where they differ.
bool same_bytes(const std::string& a, const std::string& b);
// n bytes from the system's CSPRNG.
std::string random_bytes(size_t n);
uint64_t random_u64();

}  // namespace troupe
