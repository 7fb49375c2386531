// What crosses between a coordinator and a worker (actors/wire.hpp, actors/remote.hpp): buffers round-trip exactly
// in f32 and within f16 rounding; every header field that differs from what the receiver expects is refused; steps
// with out-of-range ids, tokens, positions or blocks are refused; truncated and random input never passes or
// crashes; the handshake's MACs depend on the secret; CAF's deserializer refuses a Blob that claims more bytes than
// the message holds without allocating them.
#include <doctest/doctest.h>

#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "remote.hpp"
#include "test_util.hpp"

using namespace troupe;

namespace {

WireHeader header(uint32_t rows, uint32_t cols, WireDtype dtype = WireDtype::f32) {
  return WireHeader{dtype, WireKind::activations, 0x1234567890abcdefULL, 42, rows, cols};
}

std::vector<float> ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f - 1e-3f * static_cast<float>(i);
  return v;
}

StepLimits limits() { return StepLimits{100, 8, 10, 4, 32}; }

StepLayout layout_of(std::vector<StepLayout::Seq> seqs) {
  StepLayout l;
  for (const auto& s : seqs) l.n_tokens += s.n;
  l.seqs = std::move(seqs);
  return l;
}

}  // namespace

TEST_CASE("wire: f32 rows round-trip bit for bit, f16 within rounding, with a 48-byte header") {
  const auto x = ramp(3 * 5);
  const std::string bytes = encode_rows(header(3, 5), x.data());
  CHECK(bytes.size() == kWireHeaderBytes + 3 * 5 * 4);
  std::vector<float> out;
  REQUIRE(decode_rows(bytes, header(3, 5), false, out).has_value());
  CHECK(out == x);

  const std::string half = encode_rows(header(3, 5, WireDtype::f16), x.data());
  CHECK(half.size() == kWireHeaderBytes + 3 * 5 * 2);
  REQUIRE(decode_rows(half, header(3, 5, WireDtype::f16), false, out).has_value());
  for (size_t i = 0; i < x.size(); ++i) CHECK(out[i] == doctest::Approx(x[i]).epsilon(1e-3));
  CHECK_FALSE(decode_rows(half, header(3, 5), false, out).has_value());  // f16 where f32 was attached
  CHECK(decode_rows(half, header(3, 5), true, out).has_value());
}

TEST_CASE("wire: a header that differs from what the receiver expects is refused") {
  const auto x = ramp(2 * 4);
  const std::string bytes = encode_rows(header(2, 4), x.data());
  std::vector<float> out;
  auto refused = [&](WireHeader want) { return !decode_rows(bytes, want, false, out).has_value(); };
  CHECK(refused(header(3, 4)));  // rows
  CHECK(refused(header(2, 5)));  // cols
  WireHeader h = header(2, 4);
  h.step_id = 43;
  CHECK(refused(h));
  h = header(2, 4);
  h.session ^= 1;
  CHECK(refused(h));
  h = header(2, 4);
  h.kind = WireKind::logits;
  CHECK(refused(h));
  // Each byte of the header changed in turn: refused unless the byte is inside the payload.
  for (size_t i = 0; i < kWireHeaderBytes; ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x40);
    CAPTURE(i);
    if (i == 6) {  // dtype 0 -> 0x40: unknown
      CHECK_FALSE(decode_rows(bad, header(2, 4), true, out).has_value());
    } else {
      CHECK_FALSE(decode_rows(bad, header(2, 4), false, out).has_value());
    }
  }
  // Truncated or extended payloads.
  for (size_t n : {size_t{0}, size_t{10}, kWireHeaderBytes, bytes.size() - 1}) {
    CHECK_FALSE(decode_rows(bytes.substr(0, n), header(2, 4), false, out).has_value());
  }
  CHECK_FALSE(decode_rows(bytes + "x", header(2, 4), false, out).has_value());
}

TEST_CASE("wire: a head group's partial sums cross as f64 bits, exactly, and nothing else passes for them") {
  // (2, 4) doubles, among them values a float could not hold and bit patterns a conversion would change.
  std::vector<double> p{1.0 / 3.0, -0.0, 5e-324, 1e300, -2.5e-17, std::nextafter(1.0, 2.0), 0.1, -7.0};
  WireHeader h{WireDtype::f32, WireKind::partials, 0x1234567890abcdefULL, 42, 2, 4};  // dtype: ignored, f64
  const std::string bytes = encode_partials(h, p.data());
  CHECK(bytes.size() == kWireHeaderBytes + 2 * 4 * 8);
  CHECK(static_cast<uint8_t>(bytes[6]) == static_cast<uint8_t>(WireDtype::f64));
  std::vector<double> out;
  REQUIRE(decode_partials(bytes, h, out).has_value());
  REQUIRE(out.size() == p.size());
  for (size_t i = 0; i < p.size(); ++i) CHECK(std::memcmp(&out[i], &p[i], sizeof(double)) == 0);

  auto refused = [&](const std::string& b, WireHeader want) { return !decode_partials(b, want, out).has_value(); };
  WireHeader w = h;
  w.n_rows = 3;
  CHECK(refused(bytes, w));
  w = h;
  w.step_id = 43;
  CHECK(refused(bytes, w));
  w = h;
  w.session ^= 1;
  CHECK(refused(bytes, w));
  w = h;
  w.kind = WireKind::activations;  // a partial is only decoded as one
  CHECK(refused(bytes, w));
  for (size_t i = 0; i < kWireHeaderBytes; ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x40);
    CAPTURE(i);
    CHECK(refused(bad, h));
  }
  for (size_t n : {size_t{0}, kWireHeaderBytes, bytes.size() - 8, bytes.size() - 1}) CHECK(refused(bytes.substr(0, n), h));
  CHECK(refused(bytes + std::string(8, '\0'), h));
  // Rows are not partials, and partials are not rows: the dtype and kind must both be the expected ones.
  const auto x = ramp(2 * 8);
  WireHeader rows = h;
  rows.dtype = WireDtype::f32;
  rows.n_cols = 8;  // the same payload size as the partials (2 x 4 doubles)
  const std::string as_rows = encode_rows(rows, x.data());
  CHECK(refused(as_rows, WireHeader{WireDtype::f64, WireKind::partials, h.session, 42, 2, 8}));
  std::vector<float> fout;
  CHECK_FALSE(decode_rows(bytes, WireHeader{WireDtype::f32, WireKind::partials, h.session, 42, 2, 4}, true, fout).has_value());
}

TEST_CASE("wire: a worker's shard counters cross as u64s, and only the expected count of them") {
  const std::vector<uint64_t> v{0, 1, 0xffffffffffffffffULL, 0x0102030405060708ULL};
  const std::string bytes = encode_u64s(v);
  CHECK(bytes.size() == 32);
  CHECK(bytes[0] == 0);
  CHECK(bytes[24] == 8);  // little-endian
  std::vector<uint64_t> out;
  REQUIRE(decode_u64s(bytes, 4, out).has_value());
  CHECK(out == v);
  CHECK_FALSE(decode_u64s(bytes, 3, out).has_value());
  CHECK_FALSE(decode_u64s(bytes, 5, out).has_value());
  CHECK_FALSE(decode_u64s(bytes.substr(0, 31), 4, out).has_value());
  CHECK_FALSE(decode_u64s(bytes + "x", 4, out).has_value());
}

TEST_CASE("wire: random bytes never decode") {
  std::mt19937 rng(7);
  std::vector<float> out;
  for (int i = 0; i < 2000; ++i) {
    std::string junk(rng() % 200, '\0');
    for (auto& c : junk) c = static_cast<char>(rng());
    CHECK_FALSE(decode_rows(junk, header(2, 4), true, out).has_value());
  }
}

TEST_CASE("wire: check_step refuses what a worker must not index with") {
  const StepLimits lim = limits();
  // A good step: two sequences of 2 and 3 tokens.
  StepLayout good = layout_of({{0, 2, 0, {1}}, {2, 3, 5, {2, 3}}});
  std::vector<TokenId> tokens{1, 2, 3, 4, 5};
  CHECK(check_step(good, tokens, {1, 4}, lim).has_value());

  CHECK_FALSE(check_step(good, {1, 2, 3, 4}, {1, 4}, lim).has_value());         // a token id missing
  CHECK_FALSE(check_step(good, {1, 2, 3, 4, 100}, {1, 4}, lim).has_value());    // outside the vocabulary
  CHECK_FALSE(check_step(good, {1, 2, -1, 4, 5}, {1, 4}, lim).has_value());
  CHECK_FALSE(check_step(good, tokens, {4, 1}, lim).has_value());               // logit rows out of order
  CHECK_FALSE(check_step(good, tokens, {5}, lim).has_value());                  // past the step
  CHECK_FALSE(check_step(layout_of({{0, 2, 0, {1}}, {1, 3, 5, {2, 3}}}), tokens, {}, lim).has_value());  // overlap
  CHECK_FALSE(check_step(layout_of({{0, 2, 0, {1}}, {2, 3, 5, {2}}}), tokens, {}, lim).has_value());     // short table
  CHECK_FALSE(check_step(layout_of({{0, 2, 0, {10}}, {2, 3, 5, {2, 3}}}), tokens, {}, lim).has_value()); // block id
  CHECK_FALSE(check_step(layout_of({{0, 2, 0, {-1}}, {2, 3, 5, {2, 3}}}), tokens, {}, lim).has_value());
  CHECK_FALSE(check_step(layout_of({{0, 2, 31, {1, 2, 3, 4, 5, 6, 7, 8, 9}}, {2, 3, 5, {2, 3}}}), tokens, {}, lim)
                  .has_value());  // past the context
  CHECK_FALSE(check_step(layout_of({{0, 2, 2147483647, {1}}, {2, 3, 5, {2, 3}}}), tokens, {}, lim).has_value());
  StepLayout big = layout_of({{0, 9, 0, {1, 2, 3}}});
  CHECK_FALSE(check_step(big, std::vector<TokenId>(9, 1), {}, lim).has_value());  // more tokens than a step takes
  StepLayout n_lies = good;
  n_lies.n_tokens = 4;
  CHECK_FALSE(check_step(n_lies, {1, 2, 3, 4}, {}, lim).has_value());
  CHECK_FALSE(check_step(StepLayout{}, {}, {}, lim).has_value());
}

TEST_CASE("wire: handshake MACs depend on the secret, the label and both nonces") {
  const std::string a = random_bytes(32), b = random_bytes(32);
  CHECK(a != b);
  const std::string mac = hmac_sha256("s3cret", "troupe-worker", a, b);
  CHECK(mac.size() == 32);
  CHECK(same_bytes(mac, hmac_sha256("s3cret", "troupe-worker", a, b)));
  CHECK_FALSE(same_bytes(mac, hmac_sha256("s3creT", "troupe-worker", a, b)));
  CHECK_FALSE(same_bytes(mac, hmac_sha256("s3cret", "troupe-coordinator", a, b)));
  CHECK_FALSE(same_bytes(mac, hmac_sha256("s3cret", "troupe-worker", b, a)));
  CHECK(hmac_sha256("", "troupe-worker", a, b).size() == 32);  // loopback without a secret still runs the handshake
}

TEST_CASE("wire: the model digest is the file's size and sha256") {
  const std::string path = (std::filesystem::temp_directory_path() / "troupe-test-digest.bin").string();
  {
    std::ofstream f(path, std::ios::binary);
    f << "abc";
  }
  auto d = digest_file(path);
  std::remove(path.c_str());
  REQUIRE(d.has_value());
  CHECK(d->size == 3);
  CHECK(d->sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_FALSE(digest_file(path).has_value());
}

TEST_CASE("wire: a Blob claiming more bytes than its message holds is refused by CAF before allocating them") {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  Blob blob{encode_rows(header(2, 4), ramp(8).data())};
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE_FALSE(sink(blob));
  Blob back;
  caf::binary_deserializer source{sys, buf};
  REQUIRE_FALSE(source(back));
  CHECK(back.bytes == blob.bytes);
  // A varbyte length of 2^32 - 1 followed by three bytes: must fail as "end of stream", not allocate 4 GiB.
  std::vector<char> lie{'\xff', '\xff', '\xff', '\xff', '\x0f', 'a', 'b', 'c'};
  Blob none;
  caf::binary_deserializer liar{sys, lie};
  CHECK(liar(none));
  CHECK(none.bytes.size() < 8);
}
