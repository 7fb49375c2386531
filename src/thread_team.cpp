// thread_team.cpp: a generation counter hands out tasks; a countdown says when they are done.
#include "thread_team.hpp"

#include <immintrin.h>

#include <chrono>

namespace troupe {

namespace {
// How long a worker polls for the next task before it sleeps: a step's matmuls follow each other within
// microseconds; between steps (or when idle) the worker sleeps and costs nothing.
constexpr auto kSpin = std::chrono::microseconds(50);

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
}  // namespace

ThreadTeam::ThreadTeam(int size) {
  for (int m = 1; m < size; ++m) workers_.emplace_back([this, m] { work(m); });
}

ThreadTeam::~ThreadTeam() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadTeam::piece(int member, int64_t& begin, int64_t& end) const {
  const int64_t units = (n_ + align_ - 1) / align_;
  const int64_t per = units / size(), extra = units % size();
  const int64_t u0 = member * per + std::min<int64_t>(member, extra);
  const int64_t u1 = u0 + per + (member < extra ? 1 : 0);
  begin = std::min(n_, u0 * align_);
  end = std::min(n_, u1 * align_);
}

void ThreadTeam::run(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t align) {
  fn_ = &fn;
  n_ = n;
  align_ = std::max<int64_t>(1, align);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  int64_t begin, end;
  piece(0, begin, end);
  if (begin < end) fn(begin, end);
  // wait for the workers: poll briefly, then sleep (a worker may have lost its core on a busy machine)
  if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
    for (int left; (left = pending_.load(std::memory_order_acquire)) != 0;) pending_.wait(left, std::memory_order_acquire);
  }
}

void ThreadTeam::work(int member) {
  uint32_t seen = 0;
  for (;;) {
    if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    int64_t begin, end;
    piece(member, begin, end);
    if (begin < end) (*fn_)(begin, end);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
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
