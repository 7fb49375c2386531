// The GGUF loader on files built in memory (tests/unit/gguf_writer.hpp): every value type round-trips, and each kind
// of malformed file is refused with a one-line Error naming what is wrong, without a crash or a huge allocation.
// Then load_model on a tiny complete llama file: metadata of the wrong type, a vocabulary that does not match the
// embedding, BOS/EOS outside the vocabulary. Also the real default model, opened from disk. docs/hardening.md maps
// issue 8's GGUF checklist onto these tests.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "gguf.hpp"
#include "gguf_writer.hpp"
#include "load.hpp"
#include "test_util.hpp"

using namespace troupe;
using namespace troupe::test;

// ---- allocation tracking: the largest single operator new request and the total requested while tracking is on;
// and, to play a system short of memory, a size above which requests fail while tracking is on ----
namespace {
std::atomic<bool> g_track{false};
std::atomic<size_t> g_max_alloc{0};
std::atomic<size_t> g_total_alloc{0};
std::atomic<size_t> g_fail_above{SIZE_MAX};
}  // namespace

void* operator new(size_t n) {
  if (g_track.load(std::memory_order_relaxed)) {
    size_t prev = g_max_alloc.load(std::memory_order_relaxed);
    while (n > prev && !g_max_alloc.compare_exchange_weak(prev, n, std::memory_order_relaxed)) {
    }
    g_total_alloc.fetch_add(n, std::memory_order_relaxed);
    if (n > g_fail_above.load(std::memory_order_relaxed)) throw std::bad_alloc();
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

constexpr uint32_t F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30, Q6_K = 14;

// Parses bytes expecting failure; checks the message is one line, names the model error kind and contains each of
// the given fragments. Returns the message.
std::string expect_error(std::vector<uint8_t> bytes, std::initializer_list<const char*> fragments) {
  auto r = GgufFile::parse(std::move(bytes));
  REQUIRE_MESSAGE(!r.has_value(), "a malformed file was accepted");
  const std::string& m = r.error().message;
  CHECK(r.error().kind == ErrorKind::invalid_model);
  CHECK_MESSAGE(m.find('\n') == std::string::npos, "multi-line message: " << m);
  CHECK_MESSAGE(m.find('\r') == std::string::npos, "message with a carriage return: " << m);
  CHECK_MESSAGE(m.size() < 400, "overlong message: " << m);
  for (const char* f : fragments) CHECK_MESSAGE(m.find(f) != std::string::npos, "'" << f << "' not in: " << m);
  return m;
}

std::shared_ptr<const GgufFile> expect_ok(std::vector<uint8_t> bytes) {
  auto r = GgufFile::parse(std::move(bytes));
  REQUIRE_MESSAGE(r.has_value(), "a valid file was refused: " << r.error().message);
  return *r;
}

// A small valid file: a few metadata entries and two tensors.
GgufWriter small_writer() {
  GgufWriter w;
  w.add("general.architecture", gv::str("llama"));
  w.add("llama.block_count", gv::u32(2));
  w.add("tokenizer.ggml.tokens", gv::arr(GgufValueType::string, {gv::str("a"), gv::str("bc")}));
  w.add("flag", gv::boolean(true));
  w.tensor("a.weight", {32, 2}, Q8_0);
  w.tensor("b.weight", {4}, F32);
  return w;
}

// Runs f with allocation tracking on and returns the largest single allocation it made.
template <class F>
size_t max_alloc_during(F&& f) {
  g_max_alloc = 0;
  g_track = true;
  f();
  g_track = false;
  return g_max_alloc.load();
}

}  // namespace

TEST_CASE("gguf: every metadata value type round-trips") {
  GgufWriter w;
  w.add("u8", gv::u8(200));
  w.add("i8", gv::i8(-100));
  w.add("u16", gv::u16(60000));
  w.add("i16", gv::i16(-30000));
  w.add("u32", gv::u32(4000000000u));
  w.add("i32", gv::i32(-2000000000));
  w.add("u64", gv::u64(18000000000000000000ull));
  w.add("i64", gv::i64(-9000000000000000000ll));
  w.add("f32", gv::f32(1.5f));
  w.add("f64", gv::f64(-2.25e300));
  w.add("t", gv::boolean(true));
  w.add("f", gv::boolean(false));
  w.add("s", gv::str("hello \xe2\x82\xac"));
  w.add("empty", gv::str(""));
  w.add("a.u8", gv::arr(GgufValueType::u8, {gv::u8(1), gv::u8(255)}));
  w.add("a.i8", gv::arr(GgufValueType::i8, {gv::i8(-1), gv::i8(127)}));
  w.add("a.u16", gv::arr(GgufValueType::u16, {gv::u16(65535)}));
  w.add("a.i16", gv::arr(GgufValueType::i16, {gv::i16(-32768)}));
  w.add("a.u32", gv::arr(GgufValueType::u32, {gv::u32(7), gv::u32(8), gv::u32(9)}));
  w.add("a.i32", gv::arr(GgufValueType::i32, {gv::i32(-7)}));
  w.add("a.u64", gv::arr(GgufValueType::u64, {gv::u64(~0ull)}));
  w.add("a.i64", gv::arr(GgufValueType::i64, {gv::i64(INT64_MIN)}));
  w.add("a.f32", gv::arr(GgufValueType::f32, {gv::f32(0.25f), gv::f32(-3.0f)}));
  w.add("a.f64", gv::arr(GgufValueType::f64, {gv::f64(1e-300)}));
  w.add("a.bool", gv::arr(GgufValueType::boolean, {gv::boolean(false), gv::boolean(true)}));
  w.add("a.str", gv::arr(GgufValueType::string, {gv::str("x"), gv::str(""), gv::str("yz")}));
  w.add("a.empty", gv::arr(GgufValueType::f32, {}));
  w.add("a.nested", gv::arr(GgufValueType::array, {gv::arr(GgufValueType::i32, {gv::i32(1), gv::i32(2)}),
                                                   gv::arr(GgufValueType::string, {gv::str("deep")}),
                                                   gv::arr(GgufValueType::u8, {})}));
  w.tensor("t.f32", {8, 3}, F32);
  w.tensor("t.q41", {64}, Q4_1);
  w.tensor("t.f16", {2, 2, 2, 2}, F16);
  w.tensor("t.q40", {32, 1, 1}, Q4_0);
  w.tensor("t.bf16", {5}, BF16);
  w.tensor("t.q80", {32, 2}, Q8_0);
  const uint64_t data_offset = w.data_offset();
  const std::vector<uint64_t> offs = w.layout();
  auto f = expect_ok(w.build());

  CHECK(f->version() == 3);
  CHECK(f->alignment() == 32);
  CHECK(f->data_offset() == data_offset);
  REQUIRE(f->metadata().size() == 28);
  CHECK(f->metadata()[0].first == "u8");  // file order kept
  CHECK(f->metadata()[27].first == "a.nested");

  auto u = [&](const char* k) { REQUIRE(f->find(k)); return f->find(k)->u; };
  auto i = [&](const char* k) { REQUIRE(f->find(k)); return f->find(k)->i; };
  CHECK(f->find("u8")->type == GgufValueType::u8);
  CHECK(u("u8") == 200);
  CHECK(i("i8") == -100);
  CHECK(u("u16") == 60000);
  CHECK(i("i16") == -30000);
  CHECK(u("u32") == 4000000000u);
  CHECK(i("i32") == -2000000000);
  CHECK(u("u64") == 18000000000000000000ull);
  CHECK(i("i64") == -9000000000000000000ll);
  CHECK(f->find("f32")->f == 1.5);
  CHECK(f->find("f64")->f == -2.25e300);
  CHECK(f->find("t")->type == GgufValueType::boolean);
  CHECK(u("t") == 1);
  CHECK(u("f") == 0);
  CHECK(f->find("s")->s == "hello \xe2\x82\xac");
  CHECK(f->find("empty")->s.empty());
  CHECK(f->find("missing") == nullptr);

  auto items = [&](const char* k, GgufValueType elem) -> const std::vector<GgufValue>& {
    const GgufValue* v = f->find(k);
    REQUIRE(v);
    REQUIRE(v->type == GgufValueType::array);
    CHECK(v->elem_type == elem);
    for (const auto& it : v->items) CHECK(it.type == elem);
    return v->items;
  };
  CHECK(items("a.u8", GgufValueType::u8).size() == 2);
  CHECK(items("a.u8", GgufValueType::u8)[1].u == 255);
  CHECK(items("a.i8", GgufValueType::i8)[0].i == -1);
  CHECK(items("a.u16", GgufValueType::u16)[0].u == 65535);
  CHECK(items("a.i16", GgufValueType::i16)[0].i == -32768);
  CHECK(items("a.u32", GgufValueType::u32)[2].u == 9);
  CHECK(items("a.i32", GgufValueType::i32)[0].i == -7);
  CHECK(items("a.u64", GgufValueType::u64)[0].u == ~0ull);
  CHECK(items("a.i64", GgufValueType::i64)[0].i == INT64_MIN);
  CHECK(items("a.f32", GgufValueType::f32)[1].f == -3.0);
  CHECK(items("a.f64", GgufValueType::f64)[0].f == 1e-300);
  CHECK(items("a.bool", GgufValueType::boolean)[1].u == 1);
  CHECK(items("a.str", GgufValueType::string)[2].s == "yz");
  CHECK(items("a.str", GgufValueType::string)[1].s.empty());
  CHECK(items("a.empty", GgufValueType::f32).empty());
  const auto& nested = items("a.nested", GgufValueType::array);
  REQUIRE(nested.size() == 3);
  CHECK(nested[0].elem_type == GgufValueType::i32);
  REQUIRE(nested[0].items.size() == 2);
  CHECK(nested[0].items[1].i == 2);
  CHECK(nested[1].elem_type == GgufValueType::string);
  CHECK(nested[1].items.at(0).s == "deep");
  CHECK(nested[2].elem_type == GgufValueType::u8);
  CHECK(nested[2].items.empty());

  // typed accessors
  CHECK(*f->get_int("u32") == 4000000000ll);
  CHECK(*f->get_int("i8") == -100);
  CHECK(!f->get_int("u64").has_value());  // does not fit int64
  CHECK(!f->get_int("s").has_value());
  CHECK(*f->get_float("f32") == 1.5);
  CHECK(*f->get_float("u8") == 200.0);
  CHECK(*f->get_string("s") == "hello \xe2\x82\xac");
  CHECK(f->get_string("missing").error().message.find("missing") != std::string::npos);
  CHECK(f->get_array("a.str", GgufValueType::string).has_value());
  CHECK(!f->get_array("a.str", GgufValueType::u8).has_value());

  // tensors: shapes, types, sizes, offsets, and data pointers into the image
  REQUIRE(f->tensors().size() == 6);
  const GgufTensor* t = f->tensor("t.f32");
  REQUIRE(t);
  CHECK(t->dims == std::vector<int64_t>{8, 3});
  CHECK(t->n_elements() == 24);
  CHECK(t->rows() == 3);
  CHECK(t->n_bytes == 96);
  CHECK(t->row_bytes() == 32);
  CHECK(std::string(t->traits->name) == "f32");
  const GgufTensor* q = f->tensor("t.q41");
  REQUIRE(q);
  CHECK(q->type_id == Q4_1);
  CHECK(q->n_bytes == 40);
  CHECK(q->row_bytes() == 40);
  CHECK(f->tensor("t.f16")->dims.size() == 4);
  CHECK(f->tensor("t.f16")->n_bytes == 32);
  CHECK(f->tensor("t.q40")->n_bytes == 18);
  CHECK(f->tensor("t.bf16")->n_bytes == 10);
  CHECK(f->tensor("t.q80")->n_bytes == 68);
  CHECK(f->tensor("nope") == nullptr);
  for (size_t k = 0; k < f->tensors().size(); ++k) {
    const GgufTensor& tk = f->tensors()[k];
    CHECK(tk.offset == offs[k]);
    CHECK(tk.offset % 32 == 0);
    for (uint64_t b = 0; b < tk.n_bytes; ++b) {
      if (tk.data[b] != GgufWriter::pattern(tk.offset + b)) {
        FAIL_CHECK("tensor " << tk.name << " byte " << b << " differs");
        break;
      }
    }
  }

  // display
  CHECK(f->find("u8")->to_display() == "200");
  CHECK(f->find("t")->to_display() == "true");
  CHECK(f->find("a.u32")->to_display() == "[u32 x 3] 7, 8, 9");
}

TEST_CASE("gguf: versions 2 and 3 are accepted, 1 and 4 refused") {
  for (uint32_t v : {2u, 3u}) {
    GgufWriter w = small_writer();
    w.version = v;
    CHECK(expect_ok(w.build())->version() == v);
  }
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    GgufWriter w = small_writer();
    w.version = v;
    expect_error(w.build(), {"unsupported GGUF version", std::to_string(v).c_str()});
  }
}

TEST_CASE("gguf: bad magic") {
  GgufWriter w = small_writer();
  w.magic = 0x46554746;  // "FGUF"
  expect_error(w.build(), {"bad magic"});
  std::vector<uint8_t> text = {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '\n', 0, 0, 0, 0,
                               0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,    0, 0, 0, 0};
  expect_error(text, {"bad magic"});
  expect_error({}, {"truncated", "magic"});
}

TEST_CASE("gguf: big-endian header refused") {
  for (uint32_t v : {0x02000000u, 0x03000000u}) {
    GgufWriter w = small_writer();
    w.version = v;
    expect_error(w.build(), {"big-endian"});
  }
}

TEST_CASE("gguf: truncation at every byte fails cleanly, the whole file parses") {
  const std::vector<uint8_t> full = small_writer().build();
  REQUIRE(full.size() > 100);
  expect_ok(full);
  for (size_t n = 0; n < full.size(); ++n) {
    CAPTURE(n);
    auto r = GgufFile::parse(std::vector<uint8_t>(full.begin(), full.begin() + n));
    REQUIRE_MESSAGE(!r.has_value(), "prefix of " << n << " bytes accepted");
    const std::string& m = r.error().message;
    CHECK(m.find('\n') == std::string::npos);
    CHECK_MESSAGE((m.find("truncated") != std::string::npos || m.find("larger than the file") != std::string::npos ||
                   m.find("past the end") != std::string::npos),
                  m);
  }
}

TEST_CASE("gguf: truncation at each section boundary names what is missing") {
  GgufWriter w;
  w.add("general.architecture", gv::str("llama"));  // 8 + 20 + 4 + 8 + 5 = 45 bytes
  w.add("llama.block_count", gv::u32(2));           // 8 + 17 + 4 + 4 = 33
  w.tensor("a.weight", {32, 2}, Q8_0);              // info 8 + 8 + 4 + 16 + 4 + 8 = 48; data 68 bytes at 0
  w.tensor("b.weight", {4}, F32);                   // info 8 + 8 + 4 + 8 + 4 + 8 = 40; data 16 bytes at 96
  const std::vector<uint8_t> full = w.build();
  // header 24 | key/values to 102 | tensor infos to 190 | padding to 192 | data: a 192..260, b 288..304
  REQUIRE(w.data_offset() == 192);
  REQUIRE(full.size() == 304);
  expect_ok(full);
  const std::pair<size_t, std::vector<const char*>> cuts[] = {
      {0, {"truncated", "magic"}},
      {4, {"truncated", "version"}},
      {8, {"truncated", "tensor count"}},
      {16, {"truncated", "metadata count"}},
      {24, {"metadata count 2", "larger than the file"}},                     // after the header
      {69, {"tensor count 2", "larger than the file"}},                       // after the first key/value
      {102, {"larger than the file"}},                                        // after the key/values
      {150, {"truncated", "tensor 1 name"}},                                  // after the first tensor info
      {190, {"truncated", "tensor data section is missing"}},                 // after the tensor infos
      {192, {"'a.weight'", "past the end"}},                                  // at the data section
      {260, {"'b.weight'", "past the end"}},                                  // after the first tensor's data
      {303, {"'b.weight'", "past the end"}},                                  // one byte short
  };
  for (const auto& [n, fragments] : cuts) {
    CAPTURE(n);
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    std::string msg;
    const size_t biggest = max_alloc_during([&] {
      auto r = GgufFile::parse(std::move(cut));
      REQUIRE_FALSE(r.has_value());
      msg = r.error().message;
    });
    CAPTURE(msg);
    CHECK(msg.find('\n') == std::string::npos);
    for (const char* f : fragments) CHECK_MESSAGE(msg.find(f) != std::string::npos, "'" << f << "' not in: " << msg);
    CHECK(biggest < (64u << 10));
  }
}

TEST_CASE("gguf: counts one larger than the file holds") {
  // A count that lies makes the reader take the next section's bytes for the missing item; what it then reads is
  // refused (GGUF has no checksum: bytes that happen to form a valid file under the other reading would be taken).
  {
    GgufWriter w = small_writer();
    w.n_kv = 5;  // four key/values are written: the first tensor info is read as the fifth, then garbage as tensors
    expect_error(w.build(), {"tensor 0 name length", "too large"});
  }
  {
    GgufWriter w = small_writer();
    w.n_tensors = 3;  // two tensor infos are written: the padding is read as the third
    expect_error(w.build(), {"tensor 2 has an empty name"});
  }
  {
    GgufWriter w = small_writer();  // an array count one past its elements, at the end of the key/values
    w.add("tokens", gv::arr_n(static_cast<uint32_t>(GgufValueType::string), 3, {gv::str("a"), gv::str("b")}));
    expect_error(w.build(), {"tensor 0 name length", "too large"});
  }
  {
    GgufWriter w;  // a string length one past the end of the file (no padding after it)
    w.alignment = 1;
    w.add("name", gv::str_n(4, "abc"));
    expect_error(w.build(), {"truncated", "'name'"});
  }
}

TEST_CASE("gguf: huge counts and lengths are refused without allocating") {
  const uint64_t huge = 1ull << 62;
  auto check_huge = [](std::vector<uint8_t> bytes, std::initializer_list<const char*> fragments) {
    std::string msg;
    size_t biggest = max_alloc_during([&] { msg = expect_error(std::move(bytes), fragments); });
    CHECK_MESSAGE(biggest < (1u << 20), "allocated " << biggest << " bytes for: " << msg);
  };
  {
    GgufWriter w = small_writer();
    w.n_tensors = huge;
    check_huge(w.build(), {"tensor count", "4611686018427387904"});
  }
  {
    GgufWriter w = small_writer();
    w.n_kv = huge;
    check_huge(w.build(), {"metadata count", "4611686018427387904"});
  }
  {
    GgufWriter w;
    w.add_key_n(huge, "k", gv::u8(1));
    check_huge(w.build(), {"key", "4611686018427387904"});
  }
  {
    GgufWriter w;
    w.add("name", gv::str_n(huge, "abc"));
    check_huge(w.build(), {"'name'", "4611686018427387904"});
  }
  {
    GgufWriter w;
    w.add("arr", gv::arr_n(static_cast<uint32_t>(GgufValueType::u8), huge, {gv::u8(1)}));
    check_huge(w.build(), {"'arr'", "element count", "4611686018427387904"});
  }
  {
    GgufWriter w;  // an array of arrays: the outer count is checked against the inner arrays' minimum size
    w.add("arr", gv::arr_n(static_cast<uint32_t>(GgufValueType::array), huge / 8, {}));
    check_huge(w.build(), {"'arr'", "element count"});
  }
  {
    GgufWriter w;  // counts that are each possible but not together
    w.add("k", gv::u8(0));  // 24-byte header, then 8 + 1 + 4 + 1 bytes of key/value
    w.n_kv = 2;
    w.n_tensors = 1;
    std::vector<uint8_t> b = w.build();
    b.resize(24 + 14 + 26, 0);  // 40 bytes after the header: 2 * 13 fit, 32 fit, 26 + 32 do not
    check_huge(b, {"metadata count 2 and tensor count 1"});
  }
  {
    GgufWriter w;  // a name past the per-string limit, though the file claims to hold it
    w.tensor(std::string(100, 'x'), {4}, F32);
    std::vector<uint8_t> b = w.build();
    // the tensor name length field sits right after the 24-byte header
    const uint64_t len = (1ull << 24) + 1;
    std::memcpy(b.data() + 24, &len, 8);
    check_huge(std::move(b), {"tensor 0 name", "too large"});
  }
}

TEST_CASE("gguf: metadata arrays have a total element budget") {
  // 2^23 + 1 one-byte elements: each one would cost a GgufValue (about 100 bytes) in memory.
  const uint64_t n = (1ull << 23) + 1;
  GgufWriter w;
  w.add("big", gv::arr_n(static_cast<uint32_t>(GgufValueType::u8), n, {}));
  std::vector<uint8_t> b = w.build();
  b.resize(b.size() + n, 0);
  std::string msg;
  size_t biggest = max_alloc_during([&] { msg = expect_error(std::move(b), {"'big'", "array elements"}); });
  CHECK(biggest < (1u << 20));
}

TEST_CASE("gguf: an allocation the system refuses is an error value, not an exception") {
  // 4096 strings: the array's element vector (about 100 bytes per element) is the one large request.
  std::vector<GVal> items(4096, gv::str("tok"));
  GgufWriter w;
  w.add("tokenizer.ggml.tokens", gv::arr(GgufValueType::string, items));
  std::vector<uint8_t> bytes = w.build();
  REQUIRE(expect_ok(bytes)->find("tokenizer.ggml.tokens")->items.size() == 4096);
  g_fail_above = 64 * 1024;
  g_max_alloc = 0;
  g_track = true;
  bool threw = false;
  std::optional<Expected<std::shared_ptr<const GgufFile>>> r;
  try {
    r.emplace(GgufFile::parse(bytes));
  } catch (...) {
    threw = true;
  }
  g_track = false;
  g_fail_above = SIZE_MAX;
  REQUIRE_FALSE(threw);
  REQUIRE(r.has_value());
  REQUIRE_FALSE(r->has_value());
  CHECK(r->error().kind == ErrorKind::out_of_memory);
  CHECK(r->error().message == "GGUF: out of memory while loading");
}

TEST_CASE("gguf: dimensions whose product overflows") {
  {
    GgufWriter w;
    w.tensor("big", {1ull << 32, 1ull << 32}, F32);
    expect_error(w.build(), {"'big'", "overflow"});
  }
  {
    GgufWriter w;
    w.tensor("big", {1ull << 62, 4}, F32);
    expect_error(w.build(), {"'big'", "overflow"});
  }
  {
    GgufWriter w;  // the element count fits, the byte count does not
    w.tensor("big", {1ull << 61, 2}, F32);
    expect_error(w.build(), {"'big'", "overflow"});
  }
  {
    GgufWriter w;  // a dimension that is negative as int64
    w.tensor("neg", {1ull << 63}, F32);
    expect_error(w.build(), {"'neg'", "dimension"});
  }
  {
    GgufWriter w;  // fits in 64 bits, but far beyond the file
    w.tensor("large", {1ull << 20, 1ull << 20}, F32);
    expect_error(w.build(), {"'large'", "past the end"});
  }
}

TEST_CASE("gguf: zero dimensions refused") {
  {
    GgufWriter w;
    w.tensor("nodims", {}, F32);
    expect_error(w.build(), {"'nodims'", "0 dimensions"});
  }
  {
    GgufWriter w;
    w.tensor("zero", {4, 0}, F32);
    expect_error(w.build(), {"'zero'", "bad dimension 0"});
  }
}

TEST_CASE("gguf: more than 4 dimensions refused") {
  {
    GgufWriter w;
    w.tensor("five", {2, 2, 2, 2, 2}, F32);
    expect_error(w.build(), {"'five'", "5 dimensions"});
  }
  {
    GgufWriter w;  // a dimension count that would read far past the end if believed
    auto& t = w.tensor("many", {2}, F32);
    t.n_dims = 0xffffffffu;
    expect_error(w.build(), {"'many'", "4294967295 dimensions"});
  }
}

TEST_CASE("gguf: unsupported tensor type names the type and the tensor") {
  {
    GgufWriter w;
    w.tensor("blk.0.ffn_down.weight", {256, 4}, Q6_K);
    expect_error(w.build(), {"'blk.0.ffn_down.weight'", "unsupported type q6_k"});
  }
  {
    GgufWriter w;
    w.tensor("odd", {4}, 99);
    expect_error(w.build(), {"'odd'", "type 99"});
  }
  {
    GgufWriter w;
    w.tensor("max", {4}, 0xffffffffu);
    expect_error(w.build(), {"'max'", "unsupported type"});
  }
}

TEST_CASE("gguf: row length not a multiple of the block size") {
  for (uint32_t type : {Q4_0, Q4_1, Q8_0}) {
    GgufWriter w;
    auto& t = w.tensor("rows", {48, 2}, type);
    t.data_bytes = 4096;
    expect_error(w.build(), {"'rows'", "row length 48", "block size 32"});
  }
  GgufWriter w;  // the rows are whole blocks even though the second dimension is odd
  w.tensor("ok", {64, 3}, Q4_1);
  CHECK(expect_ok(w.build())->tensor("ok")->n_bytes == 120);
}

TEST_CASE("gguf: tensor offsets past the end") {
  {
    GgufWriter w = small_writer();
    w.tensor_at(1).offset = 1ull << 40;
    expect_error(w.build(), {"'b.weight'", "past the end"});
  }
  {
    GgufWriter w = small_writer();  // an offset that wraps around when added to the data start
    w.tensor_at(1).offset = 0xffffffffffffffe0ull;
    expect_error(w.build(), {"'b.weight'", "past the end"});
  }
  {
    GgufWriter w = small_writer();  // the last tensor one byte short
    std::vector<uint8_t> b = w.build();
    b.pop_back();
    expect_error(b, {"'b.weight'", "past the end"});
  }
  {
    GgufWriter w;  // tensors but no data section at all
    w.tensor("x", {4}, F32).data_bytes = 0;
    std::vector<uint8_t> b = w.build();
    expect_error(b, {});
  }
}

TEST_CASE("gguf: unaligned tensor offsets") {
  GgufWriter w = small_writer();
  w.tensor_at(1).offset = w.layout()[1] + 4;
  expect_error(w.build(), {"'b.weight'", "not aligned"});
}

TEST_CASE("gguf: overlapping tensors") {
  {
    GgufWriter w = small_writer();  // both at offset 0
    w.tensor_at(1).offset = 0;
    expect_error(w.build(), {"overlap", "'a.weight'", "'b.weight'"});
  }
  {
    GgufWriter w;  // the second starts inside the first
    w.tensor("first", {64, 2}, F32);  // 512 bytes at 0
    w.tensor("second", {4}, F32).offset = 256;
    expect_error(w.build(), {"overlap", "'first'", "'second'"});
  }
  {
    GgufWriter w;  // touching is fine
    w.tensor("first", {8}, F32);  // 32 bytes at 0
    w.tensor("second", {8}, F32).offset = 32;
    expect_ok(w.build());
  }
}

TEST_CASE("gguf: duplicate metadata keys refused") {
  GgufWriter w = small_writer();
  w.add("llama.block_count", gv::u32(3));
  expect_error(w.build(), {"duplicate metadata key", "'llama.block_count'"});
}

TEST_CASE("gguf: duplicate tensor names refused") {
  GgufWriter w = small_writer();
  w.tensor("a.weight", {4}, F32);
  expect_error(w.build(), {"duplicate tensor name", "'a.weight'"});
}

TEST_CASE("gguf: general.alignment is checked") {
  {
    GgufWriter w = small_writer();
    w.add("general.alignment", gv::u64(32));
    expect_error(w.build(), {"general.alignment", "u64", "expected u32"});
  }
  {
    GgufWriter w = small_writer();
    w.add("general.alignment", gv::str("32"));
    expect_error(w.build(), {"general.alignment", "string"});
  }
  for (uint32_t a : {0u, 3u, 48u, 100u, 1u << 21, 0x80000001u}) {
    GgufWriter w = small_writer();
    w.add("general.alignment", gv::u32(a));
    w.alignment = 64;
    expect_error(w.build(), {"general.alignment", std::to_string(a).c_str()});
  }
  for (uint32_t a : {1u, 8u, 64u, 4096u}) {
    GgufWriter w = small_writer();
    w.add("general.alignment", gv::u32(a));
    w.alignment = a;
    auto f = expect_ok(w.build());
    CHECK(f->alignment() == a);
    CHECK(f->data_offset() % a == 0);
    CHECK(f->tensor("b.weight")->data[0] == GgufWriter::pattern(f->tensor("b.weight")->offset));
  }
  {
    GgufWriter w = small_writer();  // offsets aligned to 32 but not to the declared 64
    w.add("general.alignment", gv::u32(64));
    w.alignment = 32;
    std::vector<uint64_t> offs = w.layout();
    REQUIRE(offs[1] % 64 != 0);
    expect_error(w.build(), {"'b.weight'", "not aligned"});
  }
}

TEST_CASE("gguf: bad value type ids refused") {
  {
    GgufWriter w;
    w.add("weird", gv::raw(13, {0, 0, 0, 0}));
    expect_error(w.build(), {"'weird'", "13", "not a GGUF value type"});
  }
  {
    GgufWriter w;
    w.add("weird", gv::raw(0xffffffffu, {}));
    expect_error(w.build(), {"'weird'", "not a GGUF value type"});
  }
  {
    GgufWriter w;
    w.add("arr", gv::arr_n(99, 1, {gv::u8(0)}));
    expect_error(w.build(), {"'arr'", "element type", "99"});
  }
}

TEST_CASE("gguf: booleans other than 0 and 1 refused") {
  for (uint8_t b : {2, 255}) {
    GgufWriter w;
    w.add("flag", gv::bool_byte(b));
    expect_error(w.build(), {"'flag'", "boolean", std::to_string(b).c_str()});
  }
  GgufWriter w;
  w.add("flags", gv::arr(GgufValueType::boolean, {gv::boolean(true), gv::bool_byte(7)}));
  expect_error(w.build(), {"'flags'", "boolean value 7"});
}

TEST_CASE("gguf: arrays nested too deep refused") {
  auto nest = [](int levels) {
    GVal v = gv::arr(GgufValueType::u8, {gv::u8(42)});
    for (int k = 1; k < levels; ++k) v = gv::arr(GgufValueType::array, {v});
    return v;
  };
  {
    GgufWriter w;
    w.add("deep", nest(4));
    auto f = expect_ok(w.build());
    const GgufValue* v = f->find("deep");
    for (int k = 0; k < 3; ++k) v = &v->items.at(0);
    CHECK(v->items.at(0).u == 42);
  }
  for (int levels : {5, 50}) {
    GgufWriter w;
    w.add("deep", nest(levels));
    expect_error(w.build(), {"'deep'", "nested deeper"});
  }
}

TEST_CASE("gguf: error messages are one line even for hostile names") {
  {
    GgufWriter w;
    w.add("line1\nline2\r\x1b[31m", gv::u8(1));
    w.add("line1\nline2\r\x1b[31m", gv::u8(2));
    std::string m = expect_error(w.build(), {"duplicate metadata key", "line1\\x0aline2\\x0d\\x1b[31m"});
  }
  {
    GgufWriter w;
    w.tensor("evil\nname", {4}, Q6_K);
    expect_error(w.build(), {"evil\\x0aname", "q6_k"});
  }
  {
    GgufWriter w;  // a long name is cut
    std::string name(5000, 'n');
    w.tensor(name, {4}, Q6_K);
    std::string m = expect_error(w.build(), {"..."});
    CHECK(m.size() < 200);
  }
  {
    GgufWriter w;  // empty names
    w.add("", gv::u8(1));
    expect_error(w.build(), {"empty metadata key"});
    GgufWriter w2;
    w2.tensor("", {4}, F32);
    expect_error(w2.build(), {"empty name"});
  }
}

TEST_CASE("gguf: to_display stays on one line") {
  GgufWriter w;
  w.add("s", gv::str("a\nb\tc\"d\x01"));
  w.add("long", gv::str(std::string(119, 'x') + "\xe2\x82\xac" + std::string(50, 'y')));
  std::vector<GVal> many;
  for (int k = 0; k < 20; ++k) many.push_back(gv::i32(k));
  w.add("many", gv::arr(GgufValueType::i32, many));
  auto f = expect_ok(w.build());
  CHECK(f->find("s")->to_display() == "\"a\\nb\\tc\\\"d\\x01\"");
  std::string l = f->find("long")->to_display();
  CHECK(l == "\"" + std::string(119, 'x') + "\"...");  // cut before the euro sign, not inside it
  CHECK(f->find("many")->to_display(3) == "[i32 x 20] 0, 1, 2, ...");
}

TEST_CASE("gguf: a long key with a long array parses in linear time") {
  // Messages name the key; building them per element (not only on failure) would copy the key once per element.
  // Work is measured as bytes allocated, not seconds, so the check holds on any machine: the file is about 3.4 MB and
  // its 300000 elements cost about 100 bytes each in memory; a key copy per element would be 300 GB.
  GgufWriter w;
  std::vector<GVal> empties(300000, gv::str(""));
  w.add(std::string(1 << 20, 'k'), gv::arr(GgufValueType::string, empties));
  std::vector<uint8_t> b = w.build();
  std::shared_ptr<const GgufFile> f;
  g_total_alloc = 0;
  max_alloc_during([&] { f = expect_ok(std::move(b)); });
  CHECK(f->metadata().at(0).second.items.size() == 300000);
  CHECK_MESSAGE(g_total_alloc.load() < (64u << 20), "parsing allocated " << g_total_alloc.load() << " bytes");
}

TEST_CASE("gguf: a file without tensors") {
  GgufWriter w;
  w.add("general.architecture", gv::str("llama"));
  auto f = expect_ok(w.build());
  CHECK(f->tensors().empty());
  CHECK(f->metadata().size() == 1);
}

TEST_CASE("gguf: opening files from disk") {
  auto missing = GgufFile::open("/nonexistent/model.gguf");
  REQUIRE(!missing.has_value());
  CHECK(missing.error().kind == ErrorKind::io);
  CHECK(missing.error().message.find("/nonexistent/model.gguf") != std::string::npos);
  auto dir = GgufFile::open("/");
  REQUIRE(!dir.has_value());
  CHECK(dir.error().message.find("not a regular file") != std::string::npos);
  auto empty = GgufFile::open("/dev/null");
  CHECK(!empty.has_value());

  // A FIFO is refused without waiting for a writer (a blocking open would hang here for ever).
  char dir_template[] = "/tmp/troupe-gguf-XXXXXX";
  REQUIRE(mkdtemp(dir_template) != nullptr);
  const std::string fifo = std::string(dir_template) + "/model.gguf";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  auto pipe = GgufFile::open(fifo);
  unlink(fifo.c_str());
  rmdir(dir_template);
  REQUIRE(!pipe.has_value());
  CHECK(pipe.error().kind == ErrorKind::io);
  CHECK(pipe.error().message == fifo + ": not a regular file");

  // A file on disk gets its path in messages.
  GgufWriter w = small_writer();
  w.magic = 0;
  char file_template[] = "/tmp/troupe-gguf-XXXXXX";
  int fd = mkstemp(file_template);
  REQUIRE(fd >= 0);
  std::vector<uint8_t> bytes = w.build();
  REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
  auto bad = GgufFile::open(file_template);
  unlink(file_template);
  REQUIRE(!bad.has_value());
  CHECK(bad.error().kind == ErrorKind::invalid_model);
  CHECK(bad.error().message == std::string(file_template) + ": bad magic: not a GGUF file");
}

// ---- the loaders on top of the reader (load_model: the model, its tokenizer, the two checked together) ----

namespace {

// A complete llama file small enough to build per test: 1 layer, 32-wide, 2 query heads and 1 KV head of 16, FFN 64,
// f32 weights (the writer's fill pattern), a byte-level BPE vocabulary of n_tokens made-up tokens and an embedding
// of n_rows rows. `with` replaces (or adds) key/values by key; a key mapped to nullopt is left out.
GgufWriter tiny_llama(int n_tokens = 40, int n_rows = 40,
                      const std::vector<std::pair<std::string, std::optional<GVal>>>& with = {}) {
  std::vector<GVal> tokens, types;
  for (int i = 0; i < n_tokens; ++i) {
    tokens.push_back(gv::str(i == 0 ? "<s>" : i == 1 ? "</s>" : "t" + std::to_string(i)));
    types.push_back(gv::i32(i < 2 ? 3 : 1));
  }
  std::vector<std::pair<std::string, std::optional<GVal>>> kvs = {
      {"general.architecture", gv::str("llama")},
      {"llama.block_count", gv::u32(1)},
      {"llama.context_length", gv::u32(64)},
      {"llama.embedding_length", gv::u32(32)},
      {"llama.feed_forward_length", gv::u32(64)},
      {"llama.attention.head_count", gv::u32(2)},
      {"llama.attention.head_count_kv", gv::u32(1)},
      {"llama.rope.freq_base", gv::f32(10000.0f)},
      {"llama.attention.layer_norm_rms_epsilon", gv::f32(1e-5f)},
      {"tokenizer.ggml.model", gv::str("gpt2")},
      {"tokenizer.ggml.pre", gv::str("gpt2")},
      {"tokenizer.ggml.tokens", gv::arr(GgufValueType::string, tokens)},
      {"tokenizer.ggml.token_type", gv::arr(GgufValueType::i32, types)},
      {"tokenizer.ggml.merges", gv::arr(GgufValueType::string, {})},
      {"tokenizer.ggml.bos_token_id", gv::u32(0)},
      {"tokenizer.ggml.eos_token_id", gv::u32(1)},
  };
  for (const auto& [key, value] : with) {
    auto it = std::find_if(kvs.begin(), kvs.end(), [&](const auto& kv) { return kv.first == key; });
    if (it == kvs.end()) kvs.emplace_back(key, value);
    else it->second = value;
  }
  GgufWriter w;
  for (const auto& [key, value] : kvs) {
    if (value) w.add(key, *value);
  }
  const uint64_t rows = static_cast<uint64_t>(n_rows);
  w.tensor("token_embd.weight", {32, rows}, F32);
  w.tensor("output_norm.weight", {32}, F32);
  w.tensor("blk.0.attn_norm.weight", {32}, F32);
  w.tensor("blk.0.ffn_norm.weight", {32}, F32);
  w.tensor("blk.0.attn_q.weight", {32, 32}, F32);
  w.tensor("blk.0.attn_k.weight", {32, 16}, F32);
  w.tensor("blk.0.attn_v.weight", {32, 16}, F32);
  w.tensor("blk.0.attn_output.weight", {32, 32}, F32);
  w.tensor("blk.0.ffn_gate.weight", {32, 64}, F32);
  w.tensor("blk.0.ffn_up.weight", {32, 64}, F32);
  w.tensor("blk.0.ffn_down.weight", {64, 32}, F32);
  return w;
}

Expected<LoadedModel> load_bytes(const std::vector<uint8_t>& bytes) {
  auto file = GgufFile::parse(bytes);
  REQUIRE_MESSAGE(file.has_value(), "the reader refused the file: " << (file ? "" : file.error().message));
  return load_model(*file);
}

// Loads expecting failure: an invalid_model Error of one line holding every fragment.
std::string expect_load_error(const GgufWriter& w, std::initializer_list<const char*> fragments) {
  auto r = load_bytes(w.build());
  REQUIRE_MESSAGE(!r.has_value(), "a bad model was loaded");
  const std::string& m = r.error().message;
  CHECK(r.error().kind == ErrorKind::invalid_model);
  CHECK(m.find('\n') == std::string::npos);
  for (const char* f : fragments) CHECK_MESSAGE(m.find(f) != std::string::npos, "'" << f << "' not in: " << m);
  return m;
}

}  // namespace

TEST_CASE("gguf load: a tiny llama file loads") {
  auto r = load_bytes(tiny_llama().build());
  REQUIRE_MESSAGE(r.has_value(), (r ? "" : r.error().message));
  CHECK(r->model->config().n_vocab == 40);
  CHECK(r->tokenizer.n_vocab() == 40);
  CHECK(r->tokenizer.bos() == 0);
  CHECK(r->tokenizer.eos() == 1);
}

TEST_CASE("gguf load: a vocabulary inconsistent with the embedding rows is refused") {
  expect_load_error(tiny_llama(41, 40), {"GGUF: ", "the vocabulary has 41 tokens but the embedding has 40 rows"});
  expect_load_error(tiny_llama(40, 41), {"the vocabulary has 40 tokens but the embedding has 41 rows"});
  // an output matrix with other rows than the embedding
  GgufWriter w = tiny_llama();
  w.tensor("output.weight", {32, 39}, F32);
  expect_load_error(w, {"'output.weight'", "shape 32 x 39", "expected 32 x 40"});
}

TEST_CASE("gguf load: metadata of the wrong type is refused, naming the key") {
  const std::vector<GVal> ids = {gv::i32(1), gv::i32(2)};
  const std::vector<std::tuple<std::string, GVal, const char*>> cases = {
      {"general.architecture", gv::u32(1), "expected string"},
      {"llama.block_count", gv::str("1"), "expected an integer"},
      {"llama.embedding_length", gv::f32(32), "expected an integer"},
      {"llama.context_length", gv::boolean(true), "expected an integer"},
      {"llama.attention.head_count", gv::arr(GgufValueType::u32, {gv::u32(2)}), "expected an integer"},
      {"llama.rope.freq_base", gv::str("10000"), "expected a number"},
      {"llama.attention.layer_norm_rms_epsilon", gv::str("1e-5"), "expected a number"},
      {"tokenizer.ggml.model", gv::u32(2), "expected string"},
      {"tokenizer.ggml.pre", gv::u32(0), "is not a string"},
      {"tokenizer.ggml.tokens", gv::arr(GgufValueType::i32, ids), "not an array of string"},
      {"tokenizer.ggml.tokens", gv::str("<s>"), "not an array of string"},
      {"tokenizer.ggml.token_type", gv::arr(GgufValueType::string, {gv::str("1")}), "not an array of i32"},
      {"tokenizer.ggml.merges", gv::str("a b"), "not an array of string"},
      {"tokenizer.ggml.bos_token_id", gv::str("0"), "is not an integer"},
      {"tokenizer.ggml.eos_token_id", gv::f32(1), "is not an integer"},
      {"tokenizer.ggml.add_bos_token", gv::u8(1), "is not a boolean"},
  };
  for (const auto& [key, value, fragment] : cases) {
    CAPTURE(key);
    expect_load_error(tiny_llama(40, 40, {{key, value}}), {key.c_str(), fragment});
  }
  // and missing ones
  for (const char* key : {"llama.block_count", "llama.embedding_length", "tokenizer.ggml.tokens",
                          "tokenizer.ggml.model", "tokenizer.ggml.merges"}) {
    CAPTURE(key);
    expect_load_error(tiny_llama(40, 40, {{key, std::nullopt}}), {"missing", key});
  }
  // hyperparameters out of range
  expect_load_error(tiny_llama(40, 40, {{"llama.block_count", gv::i64(-1)}}), {"llama.block_count", "out of range"});
  expect_load_error(tiny_llama(40, 40, {{"llama.attention.head_count", gv::u32(3)}}), {"multiple of head_count"});
  expect_load_error(tiny_llama(40, 40, {{"llama.rope.freq_base", gv::f32(NAN)}}), {"rope.freq_base"});
}

TEST_CASE("gguf load: BOS and EOS ids outside the vocabulary are refused") {
  const std::vector<std::pair<std::string, GVal>> cases = {
      {"tokenizer.ggml.bos_token_id", gv::u32(40)},         {"tokenizer.ggml.bos_token_id", gv::i32(-2)},
      {"tokenizer.ggml.bos_token_id", gv::u64(1ull << 40)}, {"tokenizer.ggml.eos_token_id", gv::u32(40)},
      {"tokenizer.ggml.eos_token_id", gv::i64(INT64_MIN)},  {"tokenizer.ggml.eot_token_id", gv::u32(100)},
      {"tokenizer.ggml.padding_token_id", gv::u32(41)},     {"tokenizer.ggml.unknown_token_id", gv::u32(12345)},
  };
  for (const auto& [key, value] : cases) {
    CAPTURE(key);
    expect_load_error(tiny_llama(40, 40, {{key, value}}), {"GGUF: ", key.c_str(), "out of range", "vocabulary of 40"});
  }
  // -1 (and its u32 spelling) means none
  auto none = load_bytes(tiny_llama(40, 40, {{"tokenizer.ggml.eos_token_id", gv::u32(0xFFFFFFFFu)}}).build());
  REQUIRE_MESSAGE(none.has_value(), (none ? "" : none.error().message));
  CHECK(none->tokenizer.eos() == -1);
  auto last = load_bytes(tiny_llama(40, 40, {{"tokenizer.ggml.eos_token_id", gv::u32(39)}}).build());
  REQUIRE(last.has_value());
  CHECK(last->tokenizer.eos() == 39);
}

TEST_CASE("gguf load: a model file on disk names the file in every refusal") {
  char file_template[] = "/tmp/troupe-load-XXXXXX";
  const int fd = mkstemp(file_template);
  REQUIRE(fd >= 0);
  const std::vector<uint8_t> bytes = tiny_llama(41, 40).build();
  REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
  auto r = load_model(file_template);
  unlink(file_template);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message == std::string(file_template) + ": the vocabulary has 41 tokens but the embedding has 40 rows");
  auto missing = load_model("/nonexistent/model.gguf");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().kind == ErrorKind::io);
}

TEST_CASE("gguf: the real model") {
  auto r = GgufFile::open(model_path());
  REQUIRE_MESSAGE(r.has_value(), "default model missing or refused (run scripts/fetch-model.sh): "
                                     << (r.has_value() ? "" : r.error().message));
  const GgufFile& f = **r;
  CHECK(*f.get_string("general.architecture") == "llama");
  CHECK(f.tensors().size() == 272);
  CHECK(*f.get_int("llama.block_count") == 30);
  const GgufTensor* t = f.tensor("token_embd.weight");
  REQUIRE(t);
  CHECK(t->type_id == Q8_0);
  CHECK(std::string(t->traits->name) == "q8_0");
  CHECK(t->dims == std::vector<int64_t>{576, 49152});
  CHECK(t->n_bytes == 576ull * 49152 / 32 * 34);
  auto tokens = f.get_array("tokenizer.ggml.tokens", GgufValueType::string);
  REQUIRE(tokens.has_value());
  CHECK((*tokens)->items.size() == 49152);
  uint64_t touched = 0;
  for (const auto& tk : f.tensors()) {
    REQUIRE(tk.data != nullptr);
    CHECK(tk.offset % f.alignment() == 0);
    CHECK(f.data_offset() + tk.offset + tk.n_bytes <= f.file_size());
    touched += tk.data[0] + tk.data[tk.n_bytes - 1];
  }
  CHECK(touched > 0);
}
