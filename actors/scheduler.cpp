// scheduler.cpp: the block pool and the continuous-batching scheduler (see scheduler.hpp for the contracts).
//
// One rule drives schedule(): a sequence's computed tokens catch up with its known tokens. A sequence with one
// uncomputed token (its last sampled one) is decoding and gets one token; one with more is in prefill (a new prompt,
// or a preempted sequence recomputing prompt + generated) and gets a chunk of what the budget leaves.
#include "scheduler.hpp"

#include <algorithm>
#include <climits>
#include <string>
#include <utility>

namespace troupe {

// ---- BlockAllocator ----

BlockAllocator::BlockAllocator(int n_blocks) : n_total_(std::max(n_blocks, 0)) {
  free_.reserve(n_total_);
  for (int b = n_total_ - 1; b >= 0; --b) free_.push_back(b);  // block 0 comes out first
  is_free_.assign(n_total_, 1);
}

std::optional<int> BlockAllocator::allocate() {
  if (free_.empty()) return std::nullopt;
  const int b = free_.back();
  free_.pop_back();
  is_free_[b] = 0;
  return b;
}

void BlockAllocator::free(int block) {
  if (block < 0 || block >= n_total_ || is_free_[block]) return;  // not ours, or freed already
  is_free_[block] = 1;
  free_.push_back(block);
}

// ---- Scheduler: admission and bookkeeping ----

int StepPlan::n_tokens() const {
  int n = 0;
  for (const StepEntry& e : entries) n += static_cast<int>(e.tokens.size());
  return n;
}

Scheduler::Scheduler(SchedulerLimits limits) : limits_(limits), blocks_(limits.n_blocks) {
  // Limits below one would stall every sequence; clamp them rather than fail in a constructor.
  limits_.block_size = std::max(limits_.block_size, 1);
  limits_.max_running = std::max(limits_.max_running, 1);
  limits_.max_batched_tokens = std::max(limits_.max_batched_tokens, 1);
  running_.reserve(limits_.max_running);
  in_flight_steps_.reserve(8);
}

Expected<void> Scheduler::add(SeqId id, std::vector<TokenId> prompt, int max_new_tokens, int credit) {
  const int64_t n_total = static_cast<int64_t>(prompt.size()) + max_new_tokens;
  if (prompt.empty()) return Error{ErrorKind::invalid_argument, "empty prompt"};
  if (max_new_tokens < 1) return Error{ErrorKind::invalid_argument, "max_new_tokens must be at least 1"};
  if (n_total > limits_.max_context)
    return Error{ErrorKind::invalid_argument, "prompt + max_new_tokens (" + std::to_string(n_total) +
                                                  ") exceeds the context of " + std::to_string(limits_.max_context)};
  if (n_total > static_cast<int64_t>(blocks_.n_total()) * limits_.block_size)
    return Error{ErrorKind::invalid_argument, "prompt + max_new_tokens does not fit in the KV cache"};
  if (seqs_.count(id)) return Error{ErrorKind::invalid_argument, "sequence id in use: " + std::to_string(id)};
  if (static_cast<int>(waiting_.size()) >= limits_.max_waiting)
    return Error{ErrorKind::overloaded, "the waiting queue is full"};

  Seq& s = seqs_[id];
  s.tokens = std::move(prompt);
  s.n_prompt = static_cast<int>(s.tokens.size());
  s.tokens.reserve(n_total);  // appends never reallocate
  s.max_new_tokens = max_new_tokens;
  s.credit = credit;
  waiting_.push_back(id);
  return {};
}

bool Scheduler::finish(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return false;
  if (it->second.in_flight_step != 0) {
    it->second.finishing = true;  // its step may still write its blocks: complete() or abort() frees them
    return true;
  }
  remove(id, SeqEvent::finished, nullptr);
  return true;
}

void Scheduler::grant(SeqId id, int n) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  it->second.credit = std::min<int64_t>(it->second.credit + n, INT_MAX);
}

void Scheduler::preempt_all() {
  // From the newest down, so that the oldest ends up at the front of the waiting queue.
  for (size_t i = running_.size(); i-- > 0;)
    if (seqs_.at(running_[i]).in_flight_step == 0) preempt(i);
}

bool Scheduler::has_work() const {
  for (const auto& [id, s] : seqs_)
    if (runnable(s)) return true;
  return false;
}

bool Scheduler::contains(SeqId id) const { return seqs_.count(id) != 0; }

const std::vector<TokenId>& Scheduler::tokens(SeqId id) const {
  static const std::vector<TokenId> none;
  auto it = seqs_.find(id);
  return it == seqs_.end() ? none : it->second.tokens;
}

int Scheduler::n_generated(SeqId id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? 0 : it->second.n_generated();
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats st;
  st.running = static_cast<int>(running_.size());
  st.waiting = static_cast<int>(waiting_.size());
  for (SeqId id : running_) st.paused += seqs_.at(id).credit <= 0;
  st.in_flight_steps = static_cast<int>(in_flight_steps_.size());
  st.blocks_used = blocks_.n_used();
  st.blocks_total = blocks_.n_total();
  st.preemptions = n_preemptions_;
  return st;
}

void Scheduler::remove(SeqId id, SeqEvent why, std::vector<std::pair<SeqId, SeqEvent>>* left) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  for (int b : it->second.blocks) blocks_.free(b);
  if (auto r = std::find(running_.begin(), running_.end(), id); r != running_.end()) running_.erase(r);
  if (auto w = std::find(waiting_.begin(), waiting_.end(), id); w != waiting_.end()) waiting_.erase(w);
  seqs_.erase(it);
  if (left) left->emplace_back(id, why);
}

void Scheduler::preempt(size_t i) {
  const SeqId id = running_[i];
  Seq& s = seqs_.at(id);
  for (int b : s.blocks) blocks_.free(b);
  s.blocks.clear();
  s.n_computed = 0;  // recompute prompt + generated; n_generated and credit stay as they are
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
  waiting_.push_front(id);
  ++n_preemptions_;
}

// ---- Scheduler: building a step ----

bool Scheduler::reserve(size_t i, int n_positions, bool* preempted) {
  Seq& s = seqs_.at(running_[i]);
  while (static_cast<int>(s.blocks.size()) < blocks_for(n_positions)) {
    if (std::optional<int> b = blocks_.allocate()) {
      s.blocks.push_back(*b);
      continue;
    }
    // The pool is dry: take the blocks of the most recently admitted sequence that is newer than this one and not
    // in flight. Older ones keep theirs; when none is left this sequence waits (it keeps its blocks, and an older
    // sequence needing blocks later will preempt it).
    size_t victim = running_.size();
    for (size_t j = running_.size(); j-- > i + 1;) {
      const Seq& v = seqs_.at(running_[j]);
      if (v.in_flight_step == 0 && !v.blocks.empty()) {
        victim = j;
        break;
      }
    }
    if (victim == running_.size()) return false;
    preempt(victim);
    *preempted = true;
  }
  return true;
}

void Scheduler::add_entry(StepPlan& plan, SeqId id, int n) {
  Seq& s = seqs_.at(id);
  StepEntry e;
  e.id = id;
  e.pos0 = s.n_computed;
  e.tokens.assign(s.tokens.begin() + e.pos0, s.tokens.begin() + e.pos0 + n);
  e.block_table.assign(s.blocks.begin(), s.blocks.begin() + blocks_for(e.pos0 + n));
  e.wants_logits = e.pos0 + n == static_cast<int>(s.tokens.size());
  s.in_flight_step = plan.step_id;
  plan.entries.push_back(std::move(e));
}

std::optional<StepPlan> Scheduler::schedule(int max_sequences) {
  StepPlan plan;
  plan.step_id = next_step_id_;
  int budget = limits_.max_batched_tokens;
  bool preempted = false;

  // 1. Decode: one token for each sequence whose only uncomputed token is its last sampled one, oldest first.
  const auto room = [&] { return budget > 0 && static_cast<int>(plan.entries.size()) < max_sequences; };
  for (size_t i = 0; i < running_.size() && room(); ++i) {
    Seq& s = seqs_.at(running_[i]);
    if (!runnable(s) || s.n_uncomputed() != 1) continue;
    if (!reserve(i, s.n_computed + 1, &preempted)) continue;
    add_entry(plan, running_[i], 1);
    budget -= 1;
  }

  // 2. Prefill: chunks of admitted sequences, oldest first, in what the budget leaves.
  for (size_t i = 0; i < running_.size() && room(); ++i) {
    Seq& s = seqs_.at(running_[i]);
    if (!runnable(s) || s.n_uncomputed() < 2) continue;
    const int want = std::min(s.n_uncomputed(), budget);
    reserve(i, s.n_computed + want, &preempted);
    const int n = std::min(want, static_cast<int>(s.blocks.size()) * limits_.block_size - s.n_computed);
    if (n <= 0) continue;
    add_entry(plan, running_[i], n);
    budget -= n;
  }

  // 3. Admission, first come first served: a waiting sequence joins when a running slot and the blocks for its
  //    first chunk are free. Not after a preemption in this step (the pool is tight; the victim would come back).
  //    Paused ones (out of credit) stay queued without holding up the others.
  for (size_t w = 0; w < waiting_.size() && !preempted && room();) {
    if (static_cast<int>(running_.size()) >= limits_.max_running) break;
    const SeqId id = waiting_[w];
    Seq& s = seqs_.at(id);
    if (s.credit <= 0) {
      ++w;
      continue;
    }
    const int n = std::min(s.n_uncomputed(), budget);  // a waiting sequence starts from position 0
    if (blocks_for(n) > blocks_.n_free()) break;
    waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(w));
    running_.push_back(id);
    reserve(running_.size() - 1, n, &preempted);  // cannot fail: the blocks are free
    add_entry(plan, id, n);
    budget -= n;
  }

  if (plan.entries.empty()) return std::nullopt;
  in_flight_steps_.push_back(plan.step_id);
  ++next_step_id_;
  return plan;
}

// ---- Scheduler: the end of a step ----

bool Scheduler::end_step(uint64_t step_id) {
  auto it = std::find(in_flight_steps_.begin(), in_flight_steps_.end(), step_id);
  if (it == in_flight_steps_.end()) return false;
  in_flight_steps_.erase(it);
  return true;
}

void Scheduler::complete(const StepPlan& step, const std::vector<TokenId>& sampled,
                         std::vector<std::pair<SeqId, SeqEvent>>* left) {
  if (!end_step(step.step_id)) return;
  size_t k = 0;  // the next sampled token
  for (const StepEntry& e : step.entries) {
    const TokenId* sample = nullptr;
    if (e.wants_logits && k < sampled.size()) sample = &sampled[k];
    k += e.wants_logits;
    auto it = seqs_.find(e.id);
    if (it == seqs_.end() || it->second.in_flight_step != step.step_id) continue;
    Seq& s = it->second;
    s.in_flight_step = 0;
    s.n_computed = e.pos0 + static_cast<int>(e.tokens.size());
    if (s.finishing) {
      remove(e.id, SeqEvent::finished, left);
      continue;
    }
    if (sample) {
      s.tokens.push_back(*sample);
      s.credit -= 1;
    } else if (e.wants_logits) {
      s.n_computed -= 1;  // no token came back for it: compute the last one again for its logits
    }
    if (s.n_generated() >= s.max_new_tokens || static_cast<int>(s.tokens.size()) >= limits_.max_context)
      remove(e.id, SeqEvent::finished, left);
  }
}

void Scheduler::abort(const StepPlan& step) {
  if (!end_step(step.step_id)) return;
  for (const StepEntry& e : step.entries) {
    auto it = seqs_.find(e.id);
    if (it != seqs_.end() && it->second.in_flight_step == step.step_id) remove(e.id, SeqEvent::cancelled, nullptr);
  }
}

}  // namespace troupe
