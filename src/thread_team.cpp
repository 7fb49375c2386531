// thread_team.cpp: work is cut into chunks that every member claims from one counter, so a member the system has
// not scheduled yet costs nothing: whoever runs takes the next chunk (the caller included). The counter carries the
// task's generation in its high half, so a worker that wakes late can never claim a chunk of another task.
#include "thread_team.hpp"

#include <immintrin.h>

#include <chrono>

namespace troupe {

namespace {
// How long a worker polls for the next task before it sleeps: a step's matmuls follow each other within
// microseconds; between steps (or when idle) the worker sleeps and costs nothing.
constexpr auto kSpin = std::chrono::microseconds(50);
constexpr int kChunksPerMember = 4;  // finer than one piece each, so the fast members take over a slow one's share

// Polls ready() for up to kSpin; true when it became true.
template <class Ready>
bool spin_until(Ready ready) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    _mm_pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

inline uint64_t pack(uint32_t generation, uint32_t left) { return (uint64_t{generation} << 32) | left; }
}  // namespace

ThreadTeam::ThreadTeam(int size) {
  for (int m = 1; m < size; ++m) workers_.emplace_back([this] { work(); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadTeam::chunk_range(uint32_t chunk, int64_t& begin, int64_t& end) const {
  const int64_t units = (n_ + align_ - 1) / align_;
  const int64_t per = units / n_chunks_, extra = units % n_chunks_;
  const int64_t u0 = chunk * per + std::min<int64_t>(chunk, extra);
  const int64_t u1 = u0 + per + (chunk < extra ? 1 : 0);
  begin = std::min(n_, u0 * align_);
  end = std::min(n_, u1 * align_);
}

// Claims and runs chunks of task `generation` until none is left. The counter holds the generation and the number
// of chunks still unclaimed, so a worker still looking at an earlier task sees either another generation or none
// left, and never reads the next task's fields before it holds a claim on it.
void ThreadTeam::take_chunks(uint32_t generation) {
  uint64_t cur = next_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t left = static_cast<uint32_t>(cur);
    if (static_cast<uint32_t>(cur >> 32) != generation || left == 0) return;
    if (!next_.compare_exchange_weak(cur, cur - 1, std::memory_order_acq_rel)) continue;
    // Holding an unfinished chunk of this task, the task cannot change: fn_, n_ and n_chunks_ are its own. Not after
    // the chunk is counted done, though: the caller may then return and start the next task, so the count to compare
    // with is read before (ThreadSanitizer saw the read of n_chunks_ race with the next run's write).
    const uint32_t n_chunks = n_chunks_;
    int64_t begin, end;
    chunk_range(n_chunks - left, begin, end);
    if (begin < end) (*fn_)(begin, end);
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_chunks) done_.notify_one();
    cur = next_.load(std::memory_order_acquire);
  }
}

void ThreadTeam::run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t align) {
  fn_ = &fn;
  n_ = n;
  align_ = std::max<int64_t>(1, align);
  const int64_t units = (n_ + align_ - 1) / align_;
  n_chunks_ = static_cast<uint32_t>(std::max<int64_t>(1, std::min<int64_t>(units, size() * kChunksPerMember)));
  done_.store(0, std::memory_order_relaxed);
  const uint32_t g = generation_.load(std::memory_order_relaxed) + 1;
  next_.store(pack(g, n_chunks_), std::memory_order_release);
  generation_.store(g, std::memory_order_release);
  generation_.notify_all();
  take_chunks(g);
  // wait for chunks other members still hold: poll briefly, then sleep
  if (!spin_until([&] { return done_.load(std::memory_order_acquire) == n_chunks_; })) {
    for (uint32_t d; (d = done_.load(std::memory_order_acquire)) != n_chunks_;) done_.wait(d, std::memory_order_acquire);
  }
}

void ThreadTeam::work() {
  uint32_t seen = 0;
  for (;;) {
    if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    take_chunks(seen);
  }
}

// Rows in pieces of whole 16-row groups, so no two threads write into one cache line of the output.
constexpr int64_t kRowAlign = 16;

void team_matmul(ThreadTeam* team, const Matrix& w, const float* x, const BlockQ8* xq, float* y, int n_tokens,
                 const Kernels& k) {
  parallel(team, w.rows, [&](int64_t r0, int64_t r1) { matmul(w, x, xq, y, n_tokens, r0, r1, k); }, kRowAlign);
}

void team_matmul_partial(ThreadTeam* team, const Matrix& w, const float* x, const BlockQ8* xq, double* y,
                         int n_tokens, const Kernels& k) {
  parallel(team, w.rows, [&](int64_t r0, int64_t r1) { matmul_partial(w, x, xq, y, n_tokens, r0, r1, k); },
           kRowAlign);
}

}  // namespace troupe
