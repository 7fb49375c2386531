// wire.cpp: the buffer header, the step check and the OpenSSL helpers of wire.hpp.
#include "wire.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <bit>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <stdexcept>

#include "fp16.hpp"

namespace troupe {

namespace {

// Little-endian stores and loads (the header has a fixed byte order whatever the host's).
void put(uint8_t* p, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

Error bad(const std::string& what) { return Error{ErrorKind::invalid_argument, "wire: " + what}; }

}  // namespace

const char* to_string(WireDtype dtype) {
  switch (dtype) {
    case WireDtype::f16: return "f16";
    case WireDtype::f64: return "f64";
    default: return "f32";
  }
}

size_t wire_dtype_bytes(WireDtype dtype) {
  switch (dtype) {
    case WireDtype::f16: return 2;
    case WireDtype::f64: return 8;
    default: return 4;
  }
}

namespace {

// The header of a buffer of n elements of the header's dtype; returns where the payload goes.
uint8_t* start_buffer(std::string& out, const WireHeader& h, size_t n) {
  const size_t payload = n * wire_dtype_bytes(h.dtype);
  out.assign(kWireHeaderBytes + payload, '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(out.data());
  put(p + 0, kWireMagic, 4);
  put(p + 4, kWireVersion, 2);
  p[6] = static_cast<uint8_t>(h.dtype);
  p[7] = static_cast<uint8_t>(h.kind);
  put(p + 8, h.session, 8);
  put(p + 16, h.step_id, 8);
  put(p + 24, h.n_rows, 4);
  put(p + 28, h.n_cols, 4);
  put(p + 32, payload, 8);
  put(p + 40, 0, 8);
  return p + kWireHeaderBytes;
}

// Checks the header of `bytes` against `want` (every field; the dtype one of `allowed`) and the payload's length
// against the shape. Returns the dtype the buffer has.
Expected<WireDtype> check_header(const std::string& bytes, const WireHeader& want,
                                 std::initializer_list<WireDtype> allowed) {
  if (bytes.size() < kWireHeaderBytes) {
    return bad("a buffer of " + std::to_string(bytes.size()) + " bytes is shorter than its header");
  }
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (get(p, 4) != kWireMagic) return bad("bad magic");
  if (get(p + 4, 2) != kWireVersion) return bad("version " + std::to_string(get(p + 4, 2)) + ", expected 1");
  const uint8_t dtype = p[6];
  if (dtype > static_cast<uint8_t>(WireDtype::f64)) return bad("unknown dtype " + std::to_string(dtype));
  bool ok = false;
  for (WireDtype a : allowed) ok = ok || dtype == static_cast<uint8_t>(a);
  if (!ok) return bad(std::string("dtype ") + to_string(static_cast<WireDtype>(dtype)) + " where another was expected");
  if (p[7] != static_cast<uint8_t>(want.kind)) return bad("kind " + std::to_string(p[7]) + " where another was expected");
  // The session token is a secret of the attach: compared without an early exit.
  uint64_t diff = get(p + 8, 8) ^ want.session;
  if (diff != 0) return bad("session token does not match this attach");
  if (get(p + 16, 8) != want.step_id) {
    return bad("step id " + std::to_string(get(p + 16, 8)) + ", expected " + std::to_string(want.step_id));
  }
  const uint64_t rows = get(p + 24, 4), cols = get(p + 28, 4);
  if (rows != want.n_rows || cols != want.n_cols) {
    return bad("shape " + std::to_string(rows) + "x" + std::to_string(cols) + ", expected " +
               std::to_string(want.n_rows) + "x" + std::to_string(want.n_cols));
  }
  const size_t elem = wire_dtype_bytes(static_cast<WireDtype>(dtype));
  const uint64_t payload = get(p + 32, 8);
  const uint64_t need = rows * cols * elem;  // rows, cols < 2^32 and equal to our own limits: no overflow
  if (payload != need || bytes.size() - kWireHeaderBytes != need) {
    return bad("payload of " + std::to_string(bytes.size() - kWireHeaderBytes) + " bytes (header says " +
               std::to_string(payload) + "), the shape needs " + std::to_string(need));
  }
  if (get(p + 40, 8) != 0) return bad("reserved field is not zero");
  return static_cast<WireDtype>(dtype);
}

}  // namespace

std::string encode_rows(const WireHeader& h, const float* rows) {
  const size_t n = static_cast<size_t>(h.n_rows) * h.n_cols;
  std::string out;
  uint8_t* body = start_buffer(out, h, n);
  if (h.dtype == WireDtype::f16) {
    for (size_t i = 0; i < n; ++i) put(body + 2 * i, f32_to_fp16(rows[i]), 2);
  } else {
    for (size_t i = 0; i < n; ++i) put(body + 4 * i, f32_to_bits(rows[i]), 4);
  }
  return out;
}

Expected<void> decode_rows(const std::string& bytes, const WireHeader& want, bool any_dtype,
                           std::vector<float>& out) {
  auto dtype = any_dtype ? check_header(bytes, want, {WireDtype::f32, WireDtype::f16})
                         : check_header(bytes, want, {want.dtype == WireDtype::f16 ? WireDtype::f16 : WireDtype::f32});
  if (!dtype) return dtype.error();
  const size_t n = static_cast<size_t>(want.n_rows) * want.n_cols;
  out.resize(n);
  const uint8_t* body = reinterpret_cast<const uint8_t*>(bytes.data()) + kWireHeaderBytes;
  if (*dtype == WireDtype::f32) {
    for (size_t i = 0; i < n; ++i) out[i] = bits_to_f32(static_cast<uint32_t>(get(body + 4 * i, 4)));
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = fp16_to_f32(static_cast<uint16_t>(get(body + 2 * i, 2)));
  }
  return {};
}

std::string encode_partials(const WireHeader& header, const double* partials) {
  WireHeader h = header;
  h.dtype = WireDtype::f64;
  const size_t n = static_cast<size_t>(h.n_rows) * h.n_cols;
  std::string out;
  uint8_t* body = start_buffer(out, h, n);
  for (size_t i = 0; i < n; ++i) put(body + 8 * i, std::bit_cast<uint64_t>(partials[i]), 8);
  return out;
}

Expected<void> decode_partials(const std::string& bytes, const WireHeader& want, std::vector<double>& out) {
  if (want.kind != WireKind::partials) return bad("partial sums expected with kind partials");
  if (auto dtype = check_header(bytes, want, {WireDtype::f64}); !dtype) return dtype.error();
  const size_t n = static_cast<size_t>(want.n_rows) * want.n_cols;
  out.resize(n);
  const uint8_t* body = reinterpret_cast<const uint8_t*>(bytes.data()) + kWireHeaderBytes;
  for (size_t i = 0; i < n; ++i) out[i] = std::bit_cast<double>(get(body + 8 * i, 8));
  return {};
}

std::string encode_u64s(const std::vector<uint64_t>& values) {
  std::string out(8 * values.size(), '\0');
  for (size_t i = 0; i < values.size(); ++i) put(reinterpret_cast<uint8_t*>(out.data()) + 8 * i, values[i], 8);
  return out;
}

Expected<void> decode_u64s(const std::string& bytes, size_t n, std::vector<uint64_t>& out) {
  if (bytes.size() != 8 * n) {
    return bad(std::to_string(bytes.size()) + " bytes of counters, expected " + std::to_string(8 * n));
  }
  out.resize(n);
  for (size_t i = 0; i < n; ++i) out[i] = get(reinterpret_cast<const uint8_t*>(bytes.data()) + 8 * i, 8);
  return {};
}

Expected<void> check_step(const StepLayout& layout, const std::vector<TokenId>& tokens,
                          const std::vector<int>& logit_rows, const StepLimits& lim) {
  const int n = layout.n_tokens;
  if (n < 1 || n > lim.max_tokens) {
    return bad("a step of " + std::to_string(n) + " tokens (1.." + std::to_string(lim.max_tokens) + " allowed)");
  }
  if (tokens.size() != static_cast<size_t>(n)) return bad("token ids do not match the step's token count");
  for (TokenId t : tokens) {
    if (t < 0 || t >= lim.n_vocab) return bad("token id " + std::to_string(t) + " outside the vocabulary");
  }
  if (layout.seqs.empty() || layout.seqs.size() > static_cast<size_t>(n)) return bad("bad sequence count");
  int next = 0;
  for (const auto& s : layout.seqs) {
    if (s.first != next || s.n < 1 || s.n > n - s.first) return bad("sequences do not tile the step's tokens");
    if (s.pos0 < 0 || s.pos0 > lim.max_context - s.n) return bad("positions outside the context");
    const int64_t need = (static_cast<int64_t>(s.pos0) + s.n + lim.block_size - 1) / lim.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < need || s.block_table.size() > static_cast<size_t>(lim.n_blocks)) {
      return bad("a block table does not cover its sequence's positions");
    }
    for (int b : s.block_table) {
      if (b < 0 || b >= lim.n_blocks) return bad("block id " + std::to_string(b) + " outside the pool");
    }
    next += s.n;
  }
  if (next != n) return bad("sequences do not cover the step's tokens");
  int prev = -1;
  for (int r : logit_rows) {
    if (r <= prev || r >= n) return bad("logit rows outside the step or out of order");
    prev = r;
  }
  return {};
}

Expected<FileDigest> digest_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{ErrorKind::io, "cannot open " + path + " to hash it"};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx);
    return Error{ErrorKind::internal, "OpenSSL: SHA-256 unavailable"};
  }
  FileDigest d;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize got = in.gcount();
    if (got <= 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(got));
    d.size += static_cast<uint64_t>(got);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  if (in.bad()) return Error{ErrorKind::io, "error reading " + path};
  char hex[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(hex, sizeof hex, "%02x", md[i]);
    d.sha256 += hex;
  }
  return d;
}

std::string hmac_sha256(const std::string& key, const std::string& label, const std::string& a, const std::string& b) {
  std::string msg = label;
  msg.push_back('\0');
  msg += a;
  msg += b;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  static const unsigned char kEmpty = 0;
  const void* k = key.empty() ? static_cast<const void*>(&kEmpty) : key.data();
  HMAC(EVP_sha256(), k, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()), msg.size(),
       out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

bool same_bytes(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (n > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    throw std::runtime_error("OpenSSL RAND_bytes failed");
  }
  return out;
}

uint64_t random_u64() {
  const std::string b = random_bytes(8);
  return get(reinterpret_cast<const uint8_t*>(b.data()), 8);
}

}  // namespace troupe
