// thread_team.hpp: a small team of threads that splits one step's work (a matmul's rows, attention's heads) between
// them and the calling thread. It is what a shard uses to run on more than one core: the shard stays one actor, its
// steps run a little faster.
//
// Every piece's result is written by exactly one thread and computed exactly as it would be alone, so the outputs do
// not depend on the team's size. Pieces are claimed, not assigned: on a busy machine a worker that has lost its core
// holds nothing up, the caller does the work. Workers poll briefly after a task (the next matmul of a step follows
// within microseconds), then sleep until the next one (std::atomic::wait), so an idle team costs no CPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "kernels.hpp"

namespace troupe {

class ThreadTeam {
 public:
  explicit ThreadTeam(int size);  // size - 1 worker threads plus the caller of run(); size >= 1
  ~ThreadTeam();
  ThreadTeam(const ThreadTeam&) = delete;
  ThreadTeam& operator=(const ThreadTeam&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) over contiguous pieces of [0, n) (a few per member, starting at multiples of `align`),
  // each piece on whichever member claims it first, and returns once all are done. Not reentrant; one caller at a
  // time.
  void run(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn, int64_t align = 1);

 private:
  void work();
  void take_chunks(uint32_t generation);
  void chunk_range(uint32_t chunk, int64_t& begin, int64_t& end) const;

  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;  // the task: set by run() before it is published
  int64_t n_ = 0, align_ = 1;
  uint32_t n_chunks_ = 0;
  std::atomic<uint32_t> generation_{0};  // bumped per task; workers sleep on it
  std::atomic<uint64_t> next_{0};        // (generation << 32) | chunks not yet claimed
  std::atomic<uint32_t> done_{0};        // chunks of the current task finished
  std::atomic<bool> stop_{false};
};

// Runs fn over [0, n) on the team, or on the calling thread when there is none.
inline void parallel(ThreadTeam* team, int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t align = 1) {
  if (team && team->size() > 1 && n > 1) team->run(n, fn, align);
  else fn(0, n);
}

// matmul and matmul_partial (kernels.hpp) with the rows split over the team (null: on the calling thread).
void team_matmul(ThreadTeam* team, const Matrix& w, const float* x, const BlockQ8* xq, float* y, int n_tokens,
                 const Kernels& k);
void team_matmul_partial(ThreadTeam* team, const Matrix& w, const float* x, const BlockQ8* xq, double* y, int n_tokens,
                         const Kernels& k);

}  // namespace troupe
