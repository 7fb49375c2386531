// fuzz_wire.cpp: libFuzzer target for what a worker process takes from another process besides CAF's own framing
// (actors/wire.hpp): decode_rows (a buffer of float rows behind a 48-byte header), decode_partials (a head group's
// f64 partial sums behind the same header) and check_step (a step's layout, tokens and logit rows against the
// worker's limits).
//
// Input: one selector byte, then the payload.
//   bit 0 = 0  decode_rows: 24 bytes say what the receiver expects (dtype, kind, session, step id, shape; bit 1 of
//              the selector: any dtype), the rest is the buffer; bit 2 copies the buffer's own header fields into the
//              expectation (so that inputs get past the header checks to the payload)
//   bit 0 = 1  check_step: 6 bytes of limits, then sequences (first, n, pos0, block table) and token ids and logit
//              rows, each a small signed number
// Checked, besides no crash, leak, hang or sanitizer report: an accepted buffer has exactly the header it was
// expected to have and the payload its shape needs, and its rows encode back to the same bytes (f32; partials
// always); an accepted
// step keeps every promise check_step makes (written out here independently): 1..max_tokens tokens, ids in the
// vocabulary, sequences tiling the tokens in order, positions inside the context, block tables covering each
// sequence's positions with ids in the pool, logit rows inside the step and increasing. A refusal is one line.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "wire.hpp"

namespace {

using namespace troupe;

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_wire: %s\n", what);
    std::abort();
  }
}

void check_refusal(const Error& e) {
  require(!e.message.empty() && e.message.find('\n') == std::string::npos, "a refusal is empty or multi-line");
}

// Reads little-endian fields off the input; zeros once it runs out.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), left_(size) {}
  uint64_t get(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n && left_ > 0; ++i, --left_) v |= static_cast<uint64_t>(*p_++) << (8 * i);
    return v;
  }
  int small() { return static_cast<int8_t>(get(1)); }  // -128..127
  size_t left() const { return left_; }
  std::string rest() {
    std::string s(reinterpret_cast<const char*>(p_), left_);
    left_ = 0;
    return s;
  }

 private:
  const uint8_t* p_;
  size_t left_;
};

uint64_t le(const std::string& b, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(b[at + i])) << (8 * i);
  return v;
}

void fuzz_decode(uint8_t selector, Reader& in) {
  WireHeader want;
  want.dtype = static_cast<WireDtype>(in.get(1) & 1);
  want.kind = static_cast<WireKind>(1 + (in.get(1) & 1));
  want.session = in.get(8);
  want.step_id = in.get(8);
  want.n_rows = static_cast<uint32_t>(in.get(2) % 64);
  want.n_cols = static_cast<uint32_t>(in.get(2) % 64);
  const bool any_dtype = selector & 2;
  const std::string bytes = in.rest();
  if ((selector & 4) && bytes.size() >= kWireHeaderBytes) {  // expect what the buffer says, shape kept small
    if (!any_dtype) want.dtype = static_cast<WireDtype>(static_cast<uint8_t>(bytes[6]) & 1);
    want.kind = static_cast<WireKind>(static_cast<uint8_t>(bytes[7]));
    want.session = le(bytes, 8, 8);
    want.step_id = le(bytes, 16, 8);
    want.n_rows = static_cast<uint32_t>(le(bytes, 24, 4) % 64);
    want.n_cols = static_cast<uint32_t>(le(bytes, 28, 4) % 64);
  }
  // The same bytes as a head group's partial sums: accepted only as exactly what encode_partials writes.
  WireHeader pw = want;
  pw.kind = WireKind::partials;
  std::vector<double> partials;
  if (auto p = decode_partials(bytes, pw, partials); !p) {
    check_refusal(p.error());
  } else {
    require(partials.size() == static_cast<size_t>(pw.n_rows) * pw.n_cols, "partials of another size than the shape");
    require(encode_partials(pw, partials.data()) == bytes, "decoded partials do not encode back to the same bytes");
  }
  std::vector<float> out;
  auto r = decode_rows(bytes, want, any_dtype, out);
  if (!r) return check_refusal(r.error());
  const auto dtype = static_cast<WireDtype>(static_cast<uint8_t>(bytes[6]));
  require(any_dtype || dtype == want.dtype, "a buffer of another dtype was accepted");
  require(static_cast<uint8_t>(bytes[7]) == static_cast<uint8_t>(want.kind), "a buffer of another kind was accepted");
  require(le(bytes, 8, 8) == want.session && le(bytes, 16, 8) == want.step_id, "another session or step accepted");
  require(le(bytes, 24, 4) == want.n_rows && le(bytes, 28, 4) == want.n_cols, "another shape accepted");
  require(out.size() == static_cast<size_t>(want.n_rows) * want.n_cols, "the rows have another size than the shape");
  require(bytes.size() == kWireHeaderBytes + out.size() * wire_dtype_bytes(dtype), "a payload of the wrong size");
  if (dtype == WireDtype::f32) {
    WireHeader h = want;
    h.dtype = dtype;
    require(encode_rows(h, out.data()) == bytes, "decoded rows do not encode back to the same bytes");
  }
}

void fuzz_step(Reader& in) {
  StepLimits lim;
  lim.n_vocab = 1 + static_cast<int>(in.get(1));
  lim.max_tokens = 1 + static_cast<int>(in.get(1) % 64);
  lim.n_blocks = 1 + static_cast<int>(in.get(1) % 32);
  lim.block_size = 1 + static_cast<int>(in.get(1) % 16);
  lim.max_context = 1 + static_cast<int>(in.get(2) % 512);
  StepLayout layout;
  layout.n_tokens = in.small();
  const int n_seqs = static_cast<int>(in.get(1) % 8);
  for (int k = 0; k < n_seqs; ++k) {
    StepLayout::Seq s;
    s.first = in.small();
    s.n = in.small();
    s.pos0 = static_cast<int16_t>(in.get(2));
    const int n_blocks = static_cast<int>(in.get(1) % 40);
    for (int b = 0; b < n_blocks; ++b) s.block_table.push_back(in.small());
    layout.seqs.push_back(std::move(s));
  }
  std::vector<TokenId> tokens;
  const int n_ids = static_cast<int>(in.get(1) % 80);
  for (int k = 0; k < n_ids; ++k) tokens.push_back(static_cast<TokenId>(static_cast<int16_t>(in.get(2))));
  std::vector<int> logit_rows;
  const int n_rows = static_cast<int>(in.get(1) % 80);
  for (int k = 0; k < n_rows; ++k) logit_rows.push_back(in.small());

  auto r = check_step(layout, tokens, logit_rows, lim);
  if (!r) return check_refusal(r.error());
  const int n = layout.n_tokens;
  require(n >= 1 && n <= lim.max_tokens, "a step of a bad size accepted");
  require(tokens.size() == static_cast<size_t>(n), "token ids not one per token");
  for (const TokenId t : tokens) require(t >= 0 && t < lim.n_vocab, "a token outside the vocabulary accepted");
  int next = 0;
  for (const auto& s : layout.seqs) {
    require(s.first == next && s.n >= 1, "sequences that do not tile the tokens accepted");
    require(s.pos0 >= 0 && static_cast<int64_t>(s.pos0) + s.n <= lim.max_context, "positions past the context");
    require(static_cast<int64_t>(s.block_table.size()) * lim.block_size >= static_cast<int64_t>(s.pos0) + s.n,
            "a block table that does not cover its positions");
    for (const int b : s.block_table) require(b >= 0 && b < lim.n_blocks, "a block outside the pool accepted");
    next += s.n;
  }
  require(next == n, "sequences that do not cover the tokens accepted");
  for (size_t k = 0; k < logit_rows.size(); ++k) {
    require(logit_rows[k] >= 0 && logit_rows[k] < n, "a logit row outside the step accepted");
    require(k == 0 || logit_rows[k] > logit_rows[k - 1], "logit rows out of order accepted");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Reader in(data + 1, size - 1);
  if (data[0] & 1) fuzz_step(in);
  else fuzz_decode(data[0], in);
  return 0;
}
