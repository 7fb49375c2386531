// scheduler.hpp: continuous batching over a paged KV cache, as a plain class (no CAF). The scheduler actor wraps it.
//
// Each step the scheduler chooses, per sequence that is free to run, how many of its tokens to compute next: one for
// a sequence that is decoding, a chunk of its prompt for one still in prefill (chunked prefill), all under a token
// budget per step. New requests join between steps; finished and cancelled ones leave and give their KV blocks back.
//
// The KV cache is paged: positions live in fixed-size blocks (block_size positions each); a sequence's block table
// maps its position p to block table[p / block_size]. Block ids are shared by every shard of a replica (each shard
// holds, for every block id, the keys and values of its own heads and layers), so only this class allocates them.
//
// With pipeline parallelism several steps are in flight at once; a sequence belongs to at most one of them (its next
// token depends on the previous step), so schedule() only picks sequences that are not in flight.
#pragma once

#include <climits>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "error.hpp"
#include "model.hpp"

namespace troupe {

using SeqId = uint64_t;

// A pool of block ids 0 .. n_blocks - 1.
class BlockAllocator {
 public:
  explicit BlockAllocator(int n_blocks);
  std::optional<int> allocate();  // nullopt when none is free
  void free(int block);
  int n_free() const { return static_cast<int>(free_.size()); }
  int n_total() const { return n_total_; }
  int n_used() const { return n_total_ - n_free(); }

 private:
  int n_total_;
  std::vector<int> free_;         // a stack: the most recently freed block is reused first
  std::vector<uint8_t> is_free_;  // (n_total): guards against freeing a block twice
};

struct SchedulerLimits {
  int block_size = 16;           // KV positions per block
  int n_blocks = 1024;           // KV blocks in the pool
  int max_running = 64;          // sequences holding KV blocks at once
  int max_batched_tokens = 256;  // tokens computed per step (decode tokens + prefill chunks)
  int max_waiting = 256;         // requests queued for admission; past this, add() refuses with "overloaded"
  int max_context = 8192;        // prompt + generated tokens per sequence
};

// One sequence's share of a step: compute tokens[0 .. n) at positions pos0 .. pos0 + n - 1.
struct StepEntry {
  SeqId id = 0;
  std::vector<TokenId> tokens;
  int pos0 = 0;
  std::vector<int> block_table;  // covers positions 0 .. pos0 + n - 1
  bool wants_logits = false;     // the chunk ends at the sequence's last known token: sample the next one
};

struct StepPlan {
  uint64_t step_id = 0;
  std::vector<StepEntry> entries;
  int n_tokens() const;
};

// What happened to a sequence, for the caller to tell its consumer.
enum class SeqEvent { preempted, finished, cancelled };

struct SchedulerStats {
  int running = 0;      // admitted sequences holding KV blocks (including paused and in flight)
  int waiting = 0;      // queued, not yet admitted (including preempted ones waiting to recompute)
  int paused = 0;       // running but out of credit
  int in_flight_steps = 0;
  int blocks_used = 0;
  int blocks_total = 0;
  uint64_t preemptions = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerLimits limits);

  // Queues a new sequence whose known tokens are `prompt`, to generate up to max_new_tokens more. Errors:
  //   overloaded        the waiting queue already holds max_waiting requests
  //   invalid_argument  the prompt is empty, or prompt + max_new_tokens exceeds max_context or the whole pool
  // `credit` is how many generated tokens may be appended before the consumer grants more (see grant()).
  Expected<void> add(SeqId id, std::vector<TokenId> prompt, int max_new_tokens, int credit = 1 << 30);

  // Builds the next step from sequences that are admitted (or can be admitted now), not in flight, not paused and
  // not finished: decode entries first (oldest sequence first), then prefill chunks, up to max_batched_tokens.
  // Allocates the blocks the step's positions need. When the pool runs dry it preempts the most recently admitted
  // sequence that is not in flight (frees its blocks; it goes back to the front of the waiting queue and will
  // recompute its prompt plus everything generated so far) rather than fail. Only sequences admitted after the one
  // that needs the blocks are preempted: when there are none, that one sits the step out and keeps its blocks.
  // Admission is first come first served and takes no blocks from running sequences; a waiting sequence without
  // credit stays queued without holding up the ones behind it. Returns nullopt when there is nothing to run. Every
  // returned sequence is marked in flight until complete() or abort() for this step. At most max_sequences
  // sequences join the step (a pipeline keeps several steps in flight, each with its share of the sequences).
  std::optional<StepPlan> schedule(int max_sequences = INT_MAX);

  // The step ran: each entry's tokens are now in the KV cache. `sampled` has one token for each entry with
  // wants_logits, in entry order; each is appended to its sequence (consuming one credit). Sequences that reach
  // max_new_tokens or max_context, or that were finished or cancelled while in flight, leave and free their blocks;
  // they are listed in `left` with the reason (finish() while in flight gives SeqEvent::finished). A step that is
  // not in flight (unknown, or completed or aborted already) is ignored.
  void complete(const StepPlan& step, const std::vector<TokenId>& sampled,
                std::vector<std::pair<SeqId, SeqEvent>>* left = nullptr);

  // The step failed: its sequences are removed and their blocks freed (the caller reports the error to them).
  void abort(const StepPlan& step);

  // The sequence ends (a stop token or string was seen, or the consumer is gone). Its blocks are freed now, or when
  // its in-flight step completes. Unknown ids are ignored. Returns whether the id was known.
  bool finish(SeqId id);

  // Backpressure: `n` more generated tokens may be appended; a sequence with no credit is paused (keeps its blocks,
  // is not scheduled) until it gets some.
  void grant(SeqId id, int n);

  // Preempts every sequence of this scheduler that is not in flight (used when a shard restarts with an empty cache).
  void preempt_all();

  // Anything waiting or runnable (in flight and paused do not count). True does not promise that schedule() returns
  // a step: the free blocks or running slots it needs may be held by steps in flight or by paused sequences.
  bool has_work() const;
  bool contains(SeqId id) const;
  // The tokens of a sequence so far (prompt + generated); empty for unknown ids.
  const std::vector<TokenId>& tokens(SeqId id) const;
  int n_generated(SeqId id) const;
  SchedulerStats stats() const;
  const SchedulerLimits& limits() const { return limits_; }

 private:
  struct Seq {
    std::vector<TokenId> tokens;  // prompt + generated; survives preemption
    int n_prompt = 0;
    int max_new_tokens = 0;
    int n_computed = 0;           // positions 0 .. n_computed - 1 hold this sequence's keys and values
    int64_t credit = 0;           // generated tokens that may still be appended; <= 0: paused
    std::vector<int> blocks;      // block table: position p lives in blocks[p / block_size]
    uint64_t in_flight_step = 0;  // the step computing it; 0 when none
    bool finishing = false;       // finish() came while in flight: leave when that step completes

    int n_generated() const { return static_cast<int>(tokens.size()) - n_prompt; }
    int n_uncomputed() const { return static_cast<int>(tokens.size()) - n_computed; }
  };

  bool runnable(const Seq& s) const { return s.in_flight_step == 0 && s.credit > 0; }
  int blocks_for(int n_positions) const { return (n_positions + limits_.block_size - 1) / limits_.block_size; }
  // Gives running_[i] blocks for positions 0 .. n_positions - 1, preempting newer sequences when the pool is dry;
  // false when it could not get them all (it keeps those it got).
  bool reserve(size_t i, int n_positions, bool* preempted);
  // Frees running_[i]'s blocks and puts it back at the front of the waiting queue.
  void preempt(size_t i);
  // Appends the sequence's next n uncomputed tokens to the plan and marks it in flight.
  void add_entry(StepPlan& plan, SeqId id, int n);
  // Frees the sequence's blocks and forgets it; notes why in `left` when given.
  void remove(SeqId id, SeqEvent why, std::vector<std::pair<SeqId, SeqEvent>>* left);
  bool end_step(uint64_t step_id);  // false for a step that is not in flight (unknown, or completed already)

  SchedulerLimits limits_;
  BlockAllocator blocks_;
  std::unordered_map<SeqId, Seq> seqs_;  // every known sequence: waiting, running, in flight
  std::vector<SeqId> running_;           // admitted, oldest admission first
  std::deque<SeqId> waiting_;            // not admitted, next to admit first
  std::vector<uint64_t> in_flight_steps_;
  uint64_t next_step_id_ = 1;
  uint64_t n_preemptions_ = 0;
};

}  // namespace troupe
