// The block pool and the continuous-batching scheduler, driven by a fake model that keeps its context in a paged
// cache: it writes each step's tokens into the blocks the plan names and samples from what it reads back through the
// block table, so a block shared by two sequences, a wrong table or a lost token changes the generated sequences.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "scheduler.hpp"

using troupe::BlockAllocator;
using troupe::ErrorKind;
using troupe::Scheduler;
using troupe::SchedulerLimits;
using troupe::SeqEvent;
using troupe::SeqId;
using troupe::StepEntry;
using troupe::StepPlan;
using troupe::TokenId;

namespace {

using Left = std::vector<std::pair<SeqId, SeqEvent>>;

// The fake model's next token: a hash of the whole context.
TokenId next_token(const std::vector<TokenId>& context) {
  uint32_t h = 2166136261u;
  for (TokenId t : context) h = (h ^ static_cast<uint32_t>(t)) * 16777619u;
  return static_cast<TokenId>(h % 1000);
}

// What a sequence generates when nothing goes wrong.
std::vector<TokenId> reference(std::vector<TokenId> tokens, int max_new_tokens) {
  for (int i = 0; i < max_new_tokens; ++i) tokens.push_back(next_token(tokens));
  return tokens;
}

std::vector<TokenId> prompt_of(int n, int seed) {
  std::vector<TokenId> p(n);
  for (int i = 0; i < n; ++i) p[i] = static_cast<TokenId>((seed * 131 + i * 7) % 1000);
  return p;
}

// A paged KV cache holding, per slot, which sequence wrote which token at which position.
struct FakeModel {
  struct Slot {
    SeqId id = 0;
    int pos = -1;
    TokenId token = -1;
  };
  int block_size;
  std::vector<Slot> slots;  // (n_blocks * block_size)

  FakeModel(int n_blocks, int bs) : block_size(bs), slots(static_cast<size_t>(n_blocks) * bs) {}

  Slot& at(const StepEntry& e, int pos) {
    return slots.at(static_cast<size_t>(e.block_table.at(pos / block_size)) * block_size + pos % block_size);
  }

  // Runs a step: writes every entry's tokens, then samples for each entry that wants logits from the context it
  // reads back through its block table.
  std::vector<TokenId> run(const StepPlan& plan) {
    for (const StepEntry& e : plan.entries)
      for (int i = 0; i < static_cast<int>(e.tokens.size()); ++i) at(e, e.pos0 + i) = {e.id, e.pos0 + i, e.tokens[i]};
    std::vector<TokenId> sampled;
    for (const StepEntry& e : plan.entries) {
      if (!e.wants_logits) continue;
      std::vector<TokenId> context;
      for (int p = 0; p < e.pos0 + static_cast<int>(e.tokens.size()); ++p) {
        const Slot& s = at(e, p);
        CHECK(s.id == e.id);  // another sequence wrote into this sequence's blocks
        CHECK(s.pos == p);
        context.push_back(s.token);
      }
      sampled.push_back(next_token(context));
    }
    return sampled;
  }
};

int blocks_for(int n, int block_size) { return (n + block_size - 1) / block_size; }

// Runs steps on the fake model and keeps what the sequences that left had generated.
struct Runner {
  Scheduler& s;
  FakeModel m;
  Left left;
  std::map<SeqId, std::vector<TokenId>> done;  // the final tokens of each sequence that left

  explicit Runner(Scheduler& scheduler) : s(scheduler), m(scheduler.limits().n_blocks, scheduler.limits().block_size) {}

  void run(const StepPlan& plan) {
    const std::vector<TokenId> sampled = m.run(plan);
    std::map<SeqId, std::vector<TokenId>> after;  // each sampling sequence's tokens after this step
    size_t k = 0;
    for (const StepEntry& e : plan.entries) {
      if (!e.wants_logits) continue;
      after[e.id] = s.tokens(e.id);
      after[e.id].push_back(sampled.at(k++));
    }
    const size_t n_left = left.size();
    s.complete(plan, sampled, &left);
    for (size_t i = n_left; i < left.size(); ++i) done[left[i].first] = after[left[i].first];
  }
  std::optional<StepPlan> step() {
    std::optional<StepPlan> plan = s.schedule();
    if (plan) run(*plan);
    return plan;
  }
  int drain() {
    int n_steps = 0;
    while (step()) REQUIRE(++n_steps < 10000);
    return n_steps;
  }
};

}  // namespace

TEST_CASE("scheduler: the block allocator hands out each block once and takes it back") {
  BlockAllocator a(4);
  CHECK(a.n_total() == 4);
  CHECK(a.n_free() == 4);
  std::set<int> got;
  for (int i = 0; i < 4; ++i) {
    std::optional<int> b = a.allocate();
    REQUIRE(b);
    CHECK(*b >= 0);
    CHECK(*b < 4);
    got.insert(*b);
  }
  CHECK(got.size() == 4);
  CHECK(a.n_used() == 4);
  CHECK_FALSE(a.allocate());
  a.free(2);
  a.free(2);   // twice: ignored
  a.free(-1);  // not a block: ignored
  a.free(4);
  CHECK(a.n_free() == 1);
  CHECK(a.allocate() == 2);  // the most recently freed comes back first
  CHECK(a.n_used() == 4);
  for (int b : got) a.free(b);
  CHECK(a.n_used() == 0);
}

TEST_CASE("scheduler: chunked prefill keeps to the budget, with the right positions and block tables") {
  Scheduler s({.block_size = 4, .n_blocks = 16, .max_running = 4, .max_batched_tokens = 8});
  Runner r(s);
  const std::vector<TokenId> prompt = prompt_of(20, 1);
  REQUIRE(s.add(7, prompt, 3));
  CHECK(s.stats().waiting == 1);

  std::vector<int> table;  // the sequence's block table so far: each step's table extends the previous one
  for (int chunk = 0; chunk < 3; ++chunk) {
    std::optional<StepPlan> plan = s.schedule();
    REQUIRE(plan);
    REQUIRE(plan->entries.size() == 1);
    const StepEntry& e = plan->entries[0];
    const int n = chunk < 2 ? 8 : 4;
    CHECK(e.id == 7);
    CHECK(e.pos0 == chunk * 8);
    CHECK(plan->n_tokens() == n);
    CHECK(e.tokens == std::vector<TokenId>(prompt.begin() + e.pos0, prompt.begin() + e.pos0 + n));
    CHECK(e.wants_logits == (chunk == 2));
    CHECK(e.block_table.size() == static_cast<size_t>(blocks_for(e.pos0 + n, 4)));
    CHECK(std::equal(table.begin(), table.end(), e.block_table.begin()));
    table = e.block_table;
    CHECK(s.stats().blocks_used == static_cast<int>(table.size()));
    CHECK(s.stats().in_flight_steps == 1);
    CHECK_FALSE(s.schedule());  // the only sequence is in flight
    r.run(*plan);
  }
  CHECK(s.n_generated(7) == 1);
  CHECK(s.tokens(7) == reference(prompt, 1));

  // Decode: one token at the next position; position 20 opens a sixth block.
  std::optional<StepPlan> plan = r.step();
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 1);
  CHECK(plan->entries[0].pos0 == 20);
  CHECK(plan->entries[0].tokens == std::vector<TokenId>{s.tokens(7)[20]});
  CHECK(plan->entries[0].wants_logits);
  CHECK(plan->entries[0].block_table.size() == 6);

  r.drain();
  CHECK(r.left == Left{{7, SeqEvent::finished}});
  CHECK(r.done[7] == reference(prompt, 3));
  CHECK_FALSE(s.contains(7));
  CHECK(s.stats().blocks_used == 0);
  CHECK(s.stats().in_flight_steps == 0);
}

TEST_CASE("scheduler: decode entries come first, oldest first, and prefill chunks fill the rest of the budget") {
  Scheduler s({.block_size = 4, .n_blocks = 32, .max_running = 8, .max_batched_tokens = 10});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(3, 1), 10));
  REQUIRE(s.add(2, prompt_of(5, 2), 10));
  std::optional<StepPlan> plan = r.step();  // both prompts in one step: 3 + 5 tokens
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 2);
  CHECK(plan->entries[0].id == 1);
  CHECK(plan->entries[1].id == 2);
  CHECK(plan->n_tokens() == 8);

  REQUIRE(s.add(3, prompt_of(30, 3), 10));
  plan = r.step();
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 3);
  CHECK(plan->entries[0].id == 1);
  CHECK(plan->entries[0].pos0 == 3);
  CHECK(plan->entries[1].id == 2);
  CHECK(plan->entries[1].pos0 == 5);
  CHECK(plan->entries[2].id == 3);
  CHECK(plan->entries[2].pos0 == 0);
  CHECK(plan->entries[2].tokens.size() == 8);  // 10 - 2 decode tokens
  CHECK_FALSE(plan->entries[2].wants_logits);
  CHECK(plan->n_tokens() == 10);

  r.drain();
  CHECK(r.left.size() == 3);
  CHECK(r.done[1] == reference(prompt_of(3, 1), 10));
  CHECK(r.done[3] == reference(prompt_of(30, 3), 10));
  CHECK(s.stats().blocks_used == 0);
}

TEST_CASE("scheduler: add refuses past max_waiting and bad requests and admission stops at max_running") {
  Scheduler s({.block_size = 4, .n_blocks = 8, .max_running = 2, .max_batched_tokens = 64, .max_waiting = 3,
               .max_context = 20});
  Runner r(s);
  for (SeqId id = 1; id <= 3; ++id) CHECK(s.add(id, prompt_of(4, static_cast<int>(id)), 2));
  troupe::Expected<void> refused = s.add(4, prompt_of(4, 4), 2);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().kind == ErrorKind::overloaded);

  CHECK(s.add(5, {}, 2).error().kind == ErrorKind::invalid_argument);
  CHECK(s.add(5, prompt_of(4, 5), 0).error().kind == ErrorKind::invalid_argument);
  CHECK(s.add(5, prompt_of(15, 5), 6).error().kind == ErrorKind::invalid_argument);  // past max_context
  CHECK(s.add(1, prompt_of(4, 5), 2).error().kind == ErrorKind::invalid_argument);   // id in use
  CHECK(s.stats().waiting == 3);

  std::optional<StepPlan> plan = s.schedule();
  REQUIRE(plan);
  CHECK(plan->entries.size() == 2);
  CHECK(s.stats().running == 2);
  CHECK(s.stats().waiting == 1);
  CHECK(s.add(4, prompt_of(4, 4), 2));  // room in the queue again
  CHECK(s.add(5, prompt_of(4, 5), 2));
  CHECK(s.add(6, prompt_of(4, 6), 2).error().kind == ErrorKind::overloaded);
  r.run(*plan);
  plan = r.step();
  REQUIRE(plan);
  CHECK(plan->entries.size() == 2);  // the two running ones decode; 3 still waits
  CHECK(s.stats().running <= 2);
  CHECK(r.left == Left{{1, SeqEvent::finished}, {2, SeqEvent::finished}});
  plan = r.step();
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 2);
  CHECK(plan->entries[0].id == 3);
  CHECK(plan->entries[1].id == 4);
  r.drain();
  CHECK(r.done.size() == 5);
  CHECK(s.stats().blocks_used == 0);
  CHECK_FALSE(s.has_work());
}

TEST_CASE("scheduler: a dry pool preempts the newest sequence, which recomputes and generates the same tokens") {
  // 6 blocks of 2 positions. Two 4-token prompts take 2 blocks each; as both decode, the older one needs the blocks
  // the newer holds.
  Scheduler s({.block_size = 2, .n_blocks = 6, .max_running = 4, .max_batched_tokens = 16});
  Runner r(s);
  const std::vector<TokenId> p1 = prompt_of(4, 1), p2 = prompt_of(4, 2);
  REQUIRE(s.add(1, p1, 7));
  REQUIRE(s.add(2, p2, 7));
  int n_generated_2 = -1;
  for (int step = 0; step < 100 && s.stats().preemptions == 0; ++step) {
    std::optional<StepPlan> plan = s.schedule();
    REQUIRE(plan);
    if (s.stats().preemptions > 0) {
      REQUIRE(plan->entries.size() == 1);
      CHECK(plan->entries[0].id == 1);  // the older one carries on
      CHECK(s.stats().waiting == 1);
      CHECK(s.stats().running == 1);
      CHECK(s.stats().blocks_used == static_cast<int>(plan->entries[0].block_table.size()));
      n_generated_2 = s.n_generated(2);
    }
    r.run(*plan);
  }
  REQUIRE(s.stats().preemptions == 1);
  CHECK(n_generated_2 == 3);
  CHECK(s.n_generated(2) == 3);  // preemption loses nothing generated
  CHECK(s.tokens(2) == reference(p2, 3));

  // 2 comes back once there are blocks for its first chunk: prompt + generated, recomputed from position 0.
  bool recomputed = false;
  while (std::optional<StepPlan> plan = s.schedule()) {
    for (const StepEntry& e : plan->entries)
      if (e.id == 2 && !recomputed) {
        recomputed = true;
        CHECK(e.pos0 == 0);
        CHECK(e.tokens == reference(p2, 3));
        CHECK(e.wants_logits);
      }
    r.run(*plan);
  }
  CHECK(recomputed);
  CHECK(r.left == Left{{1, SeqEvent::finished}, {2, SeqEvent::finished}});
  CHECK(r.done[1] == reference(p1, 7));
  CHECK(r.done[2] == reference(p2, 7));  // exactly max_new_tokens, the same tokens as without preemption
  CHECK(s.stats().preemptions == 1);
  CHECK(s.stats().blocks_used == 0);
}

TEST_CASE("scheduler: preempt_all sends back every sequence not in flight") {
  Scheduler s({.block_size = 4, .n_blocks = 16});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(3, 1), 5));
  REQUIRE(s.add(2, prompt_of(6, 2), 5));
  REQUIRE(r.step());
  REQUIRE(s.add(3, prompt_of(2, 3), 5));
  s.preempt_all();
  CHECK(s.stats().preemptions == 2);
  CHECK(s.stats().blocks_used == 0);
  CHECK(s.stats().running == 0);
  CHECK(s.stats().waiting == 3);
  CHECK(s.n_generated(1) == 1);

  std::optional<StepPlan> plan = s.schedule();  // all three again, in admission order, from position 0
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 3);
  for (int i = 0; i < 3; ++i) {
    CHECK(plan->entries[i].id == static_cast<SeqId>(i + 1));
    CHECK(plan->entries[i].pos0 == 0);
    CHECK(plan->entries[i].wants_logits);
  }
  CHECK(plan->entries[0].tokens == reference(prompt_of(3, 1), 1));
  const int used = s.stats().blocks_used;
  s.preempt_all();  // everything is in flight: nothing to do
  CHECK(s.stats().preemptions == 2);
  CHECK(s.stats().blocks_used == used);
  r.run(*plan);
  r.drain();
  CHECK(r.done[1] == reference(prompt_of(3, 1), 5));
  CHECK(r.done[2] == reference(prompt_of(6, 2), 5));
  CHECK(r.done[3] == reference(prompt_of(2, 3), 5));
  CHECK(s.stats().blocks_used == 0);
}

TEST_CASE("scheduler: a sequence out of credit pauses with its blocks and resumes on grant") {
  Scheduler s({.block_size = 4, .n_blocks = 8});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(5, 1), 10, /*credit=*/2));
  REQUIRE(r.step());
  REQUIRE(r.step());
  CHECK(s.n_generated(1) == 2);
  CHECK_FALSE(s.schedule());
  CHECK_FALSE(s.has_work());
  CHECK(s.stats().paused == 1);
  CHECK(s.stats().blocks_used == 2);  // it keeps its blocks
  s.grant(1, 1);
  CHECK(s.has_work());
  CHECK(s.stats().paused == 0);
  std::optional<StepPlan> plan = r.step();
  REQUIRE(plan);
  CHECK(plan->entries[0].pos0 == 6);
  CHECK(s.n_generated(1) == 3);
  CHECK_FALSE(s.schedule());
  s.grant(1, 100);
  r.drain();
  CHECK(r.done[1] == reference(prompt_of(5, 1), 10));
  CHECK(s.stats().blocks_used == 0);

  // A waiting sequence without credit does not hold up the one behind it.
  REQUIRE(s.add(2, prompt_of(3, 2), 2, /*credit=*/0));
  REQUIRE(s.add(3, prompt_of(3, 3), 2));
  plan = r.step();
  REQUIRE(plan);
  REQUIRE(plan->entries.size() == 1);
  CHECK(plan->entries[0].id == 3);
  r.drain();
  CHECK(s.stats().waiting == 1);
  s.grant(2, 5);
  r.drain();
  CHECK(r.left == Left{{1, SeqEvent::finished}, {3, SeqEvent::finished}, {2, SeqEvent::finished}});
}

TEST_CASE("scheduler: finish while in flight frees the blocks only when the step completes") {
  Scheduler s({.block_size = 4, .n_blocks = 8});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(6, 1), 10));
  REQUIRE(s.add(2, prompt_of(6, 2), 10));
  REQUIRE(s.add(3, prompt_of(6, 3), 10));
  std::optional<StepPlan> plan = s.schedule();
  REQUIRE(plan);
  CHECK(s.finish(1));
  CHECK(s.contains(1));
  CHECK(s.stats().blocks_used == 6);  // the step may still write 1's blocks
  CHECK_FALSE(s.schedule());          // 1 does not come back
  r.run(*plan);
  CHECK(r.left == Left{{1, SeqEvent::finished}});
  CHECK_FALSE(s.contains(1));
  CHECK(s.stats().blocks_used == 4);
  CHECK(s.n_generated(2) == 1);

  CHECK(s.finish(2));  // not in flight: freed at once
  CHECK_FALSE(s.contains(2));
  CHECK(s.stats().blocks_used == 2);
  CHECK_FALSE(s.finish(2));
  CHECK_FALSE(s.finish(99));

  REQUIRE(s.add(4, prompt_of(6, 4), 10));
  CHECK(s.finish(4));  // still waiting
  CHECK(s.stats().waiting == 0);
  CHECK(s.finish(3));
  CHECK(s.stats().blocks_used == 0);
  CHECK(s.stats().running == 0);
  CHECK_FALSE(s.schedule());
  CHECK(r.left.size() == 1);  // finish() outside a step reports nothing through `left`
}

TEST_CASE("scheduler: abort removes the step's sequences and frees their blocks") {
  Scheduler s({.block_size = 4, .n_blocks = 8});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(6, 1), 10));
  REQUIRE(s.add(2, prompt_of(6, 2), 10));
  std::optional<StepPlan> plan = s.schedule();
  REQUIRE(plan);
  CHECK(s.stats().in_flight_steps == 1);
  s.abort(*plan);
  CHECK(s.stats().in_flight_steps == 0);
  CHECK_FALSE(s.contains(1));
  CHECK_FALSE(s.contains(2));
  CHECK(s.stats().blocks_used == 0);
  CHECK(s.stats().running == 0);
  s.complete(*plan, {1, 2}, &r.left);  // a step that is no longer in flight changes nothing
  CHECK(r.left.empty());
  CHECK_FALSE(s.has_work());
}

TEST_CASE("scheduler: a sequence leaves after max_new_tokens, or when it fills max_context") {
  Scheduler s({.block_size = 4, .n_blocks = 8, .max_context = 10});
  Runner r(s);
  REQUIRE(s.add(1, prompt_of(3, 1), 4));
  REQUIRE(s.add(2, prompt_of(6, 2), 4));  // 6 + 4 == max_context
  std::map<SeqId, int> most_generated;
  while (r.step())
    for (SeqId id : {1, 2})
      if (s.contains(id)) most_generated[id] = std::max(most_generated[id], s.n_generated(id));
  CHECK(most_generated[1] == 3);  // the 4th token leaves with the sequence: it is never scheduled
  CHECK(most_generated[2] == 3);
  CHECK(r.left == Left{{1, SeqEvent::finished}, {2, SeqEvent::finished}});
  CHECK(r.done[1].size() == 7);
  CHECK(r.done[2].size() == 10);
  CHECK(s.stats().blocks_used == 0);
}

// A random workload on a small pool with two steps in flight at once, completed in random order, with random
// cancels, aborts, credit and preempt_all. After every call the test's own account of which sequence owns which
// blocks must match the scheduler's: a preemption is expected to take the most recently admitted sequences outside
// any step. Every sequence that runs to the end must have generated the reference tokens.
TEST_CASE("scheduler: a random workload keeps the block accounting and generates the reference tokens") {
  const int bs = 4, n_blocks = 24, budget = 16, max_running = 6, max_waiting = 8;
  for (uint32_t seed : {1u, 2u, 3u, 4u, 5u}) {
    CAPTURE(seed);
    std::mt19937 rng(seed);
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    Scheduler s({.block_size = bs, .n_blocks = n_blocks, .max_running = max_running, .max_batched_tokens = budget,
                 .max_waiting = max_waiting, .max_context = 64});
    FakeModel m(n_blocks, bs);

    struct Tracked {
      std::vector<TokenId> prompt;
      int max_new_tokens = 0;
      std::vector<int> table;    // the blocks it holds, as the test knows them
      uint64_t in_flight = 0;    // the step it is in, 0 if none
      uint64_t admitted_at = 0;  // when it last started from position 0: the admission order
      bool cancelled = false;
    };
    std::map<SeqId, Tracked> live;
    std::vector<StepPlan> in_flight;
    SeqId next_id = 1;
    uint64_t n_admissions = 0, preemptions_seen = 0;
    int n_whole = 0;  // sequences that generated all their tokens

    auto check_accounting = [&] {
      std::set<int> owned;
      int n_owned = 0;
      for (const auto& [id, t] : live) {
        n_owned += static_cast<int>(t.table.size());
        owned.insert(t.table.begin(), t.table.end());
      }
      CHECK(static_cast<int>(owned.size()) == n_owned);  // no block owned twice
      CHECK(s.stats().blocks_used == n_owned);
      CHECK(s.stats().running <= max_running);
      CHECK(s.stats().in_flight_steps == static_cast<int>(in_flight.size()));
    };

    for (int iter = 0; iter < 3000 || !live.empty(); ++iter) {
      REQUIRE(iter < 30000);
      const bool feeding = iter < 3000;
      // Arrivals, cancels, credit, a shard restart.
      if (feeding && pick(0, 2) == 0) {
        const int n_prompt = pick(1, 30), max_new = pick(1, 20);
        const int credit = pick(0, 3) == 0 ? pick(0, 3) : 1 << 30;
        const int n_waiting = s.stats().waiting;
        troupe::Expected<void> added = s.add(next_id, prompt_of(n_prompt, static_cast<int>(next_id)), max_new, credit);
        CHECK(added.has_value() == (n_waiting < max_waiting));
        if (added) {
          live[next_id].prompt = prompt_of(n_prompt, static_cast<int>(next_id));
          live[next_id].max_new_tokens = max_new;
        } else {
          CHECK(added.error().kind == ErrorKind::overloaded);
        }
        ++next_id;
      }
      if (!live.empty() && pick(0, 40) == 0) {
        auto it = std::next(live.begin(), pick(0, static_cast<int>(live.size()) - 1));
        it->second.cancelled = true;
        CHECK(s.finish(it->first));
        CHECK(s.contains(it->first) == (it->second.in_flight != 0));
        if (it->second.in_flight == 0) live.erase(it);
      }
      for (auto& [id, t] : live)
        if (!feeding || pick(0, 5) == 0) s.grant(id, pick(1, 3));
      if (feeding && pick(0, 300) == 0) {
        s.preempt_all();
        for (auto& [id, t] : live)
          if (t.in_flight == 0) t.table.clear();
        preemptions_seen = s.stats().preemptions;
      }
      check_accounting();

      // A new step while fewer than two are in flight.
      std::optional<StepPlan> plan;
      if (in_flight.size() < 2) plan = s.schedule();
      if (plan) {
        CHECK(plan->n_tokens() <= budget);
        std::set<SeqId> in_plan;
        for (const StepEntry& e : plan->entries) CHECK(in_plan.insert(e.id).second);
        // Preemptions in this schedule() took the most recently admitted sequences outside any step.
        const uint64_t n_new = s.stats().preemptions - preemptions_seen;
        preemptions_seen = s.stats().preemptions;
        std::vector<std::pair<uint64_t, SeqId>> candidates;
        for (auto& [id, t] : live)
          if (t.in_flight == 0 && !in_plan.count(id) && !t.table.empty()) candidates.emplace_back(t.admitted_at, id);
        std::sort(candidates.rbegin(), candidates.rend());
        REQUIRE(candidates.size() >= n_new);
        for (uint64_t k = 0; k < n_new; ++k) live.at(candidates[k].second).table.clear();
        // The entries: positions, tables, logits.
        for (const StepEntry& e : plan->entries) {
          REQUIRE(live.count(e.id));
          Tracked& t = live.at(e.id);
          CHECK(t.in_flight == 0);
          CHECK_FALSE(t.cancelled);
          REQUIRE_FALSE(e.tokens.empty());
          const int end = e.pos0 + static_cast<int>(e.tokens.size());
          CHECK(e.block_table.size() == static_cast<size_t>(blocks_for(end, bs)));
          if (e.pos0 == 0) {
            CHECK(t.table.empty());
            t.admitted_at = ++n_admissions;
          } else {
            CHECK(std::equal(t.table.begin(), t.table.end(), e.block_table.begin()));
          }
          CHECK(e.wants_logits == (end == static_cast<int>(s.tokens(e.id).size())));
          CHECK(std::equal(e.tokens.begin(), e.tokens.end(), s.tokens(e.id).begin() + e.pos0));
          CHECK(s.n_generated(e.id) < t.max_new_tokens);
          t.table = e.block_table;
          t.in_flight = plan->step_id;
        }
        in_flight.push_back(std::move(*plan));
        check_accounting();
      }

      // Complete or fail a step in flight, in random order.
      if (!in_flight.empty() && (in_flight.size() == 2 || pick(0, 1) == 0 || !s.has_work())) {
        const size_t k = static_cast<size_t>(pick(0, static_cast<int>(in_flight.size()) - 1));
        const StepPlan done = std::move(in_flight[k]);
        in_flight.erase(in_flight.begin() + static_cast<std::ptrdiff_t>(k));
        for (const StepEntry& e : done.entries) live.at(e.id).in_flight = 0;
        if (pick(0, 100) == 0) {
          s.abort(done);
          for (const StepEntry& e : done.entries) {
            CHECK_FALSE(s.contains(e.id));
            live.erase(e.id);
          }
        } else {
          const std::vector<TokenId> sampled = m.run(done);
          std::map<SeqId, std::vector<TokenId>> after;
          size_t i_sample = 0;
          for (const StepEntry& e : done.entries) {
            if (!e.wants_logits) continue;
            after[e.id] = s.tokens(e.id);
            after[e.id].push_back(sampled.at(i_sample++));
          }
          Left left;
          s.complete(done, sampled, &left);
          for (const StepEntry& e : done.entries) {
            const Tracked& t = live.at(e.id);
            if (s.contains(e.id)) {
              CHECK(s.tokens(e.id) == reference(t.prompt, s.n_generated(e.id)));
              CHECK(s.n_generated(e.id) < t.max_new_tokens);
            }
          }
          for (auto [id, why] : left) {
            CHECK(why == SeqEvent::finished);
            CHECK_FALSE(s.contains(id));
            const Tracked& t = live.at(id);
            if (!t.cancelled) {
              CHECK(after[id] == reference(t.prompt, t.max_new_tokens));
              ++n_whole;
            }
            live.erase(id);
          }
        }
        check_accounting();
      }
    }
    CHECK(in_flight.empty());
    CHECK(s.stats().blocks_used == 0);
    CHECK(s.stats().running == 0);
    CHECK(s.stats().waiting == 0);
    CHECK_FALSE(s.has_work());
    CHECK(n_whole > 100);
    CHECK(s.stats().preemptions > 0);  // the pool was small enough to need them
  }
}

TEST_CASE("scheduler: a step takes at most max_sequences sequences, leaving the rest for the next step in flight") {
  Scheduler s({.block_size = 4, .n_blocks = 64, .max_running = 8, .max_batched_tokens = 64});
  for (SeqId id = 1; id <= 5; ++id) REQUIRE(s.add(id, prompt_of(3, static_cast<int>(id)), 4));
  auto first = s.schedule(2);
  REQUIRE(first);
  CHECK(first->entries.size() == 2);
  auto second = s.schedule(2);
  REQUIRE(second);
  CHECK(second->entries.size() == 2);
  auto third = s.schedule(2);
  REQUIRE(third);
  CHECK(third->entries.size() == 1);
  CHECK_FALSE(s.schedule(2));  // every sequence is in flight
  std::set<SeqId> seen;
  for (const auto* p : {&*first, &*second, &*third}) {
    for (const auto& e : p->entries) CHECK(seen.insert(e.id).second);  // no sequence in two steps
  }
  CHECK(seen.size() == 5);
}
