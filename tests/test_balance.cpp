// The balancing decision of attention/MoE separation (parallel/balance.hpp) against
// hand-computed cases: busy times, threshold and current split in, action out.
#include <catch2/catch.hpp>

#include "moeproxy/parallel/balance.hpp"

using namespace moeproxy;
using namespace moeproxy::parallel;

namespace {

BalanceState running(int micro_batches) {
  BalanceState s;
  s.micro_batches = s.best_micro_batches = micro_batches;
  return s;
}

BalanceMeasure measure(double attention, double ffn, double step) {
  BalanceMeasure m;
  m.attention_busy = attention;
  m.ffn_busy = ffn;
  m.step_seconds = step;
  return m;
}

}  // namespace

TEST_CASE("balance: imbalance is the busier side's surplus over its own busy time", "[balance]") {
  CHECK(side_imbalance(4.0, 3.0) == Approx(0.25));
  CHECK(side_imbalance(3.0, 4.0) == Approx(0.25));
  CHECK(side_imbalance(2.0, 2.0) == 0.0);
  CHECK(side_imbalance(0.0, 0.0) == 0.0);
  CHECK(side_imbalance(0.0, 1.0) == Approx(1.0));
}

TEST_CASE("balance: within the threshold nothing changes and the step time becomes the baseline", "[balance]") {
  // (1.0 - 0.96) / 1.0 = 0.04 <= 0.05
  const BalanceDecision d = decide_balance(running(2), measure(1.0, 0.96, 3.0), 0.05, 8);
  CHECK(d.move == BalanceMove::none);
  CHECK(d.imbalance == Approx(0.04));
  CHECK(d.next.micro_batches == 2);
  CHECK_FALSE(d.next.trial);
  CHECK(d.next.best_step_seconds == 3.0);
}

TEST_CASE("balance: above the threshold a finer split goes on trial", "[balance]") {
  // (2.0 - 1.5) / 2.0 = 0.25 > 0.05
  const BalanceDecision d = decide_balance(running(2), measure(1.5, 2.0, 4.0), 0.05, 8);
  CHECK(d.move == BalanceMove::finer);
  CHECK(d.imbalance == Approx(0.25));
  CHECK(d.next.micro_batches == 3);
  CHECK(d.next.trial);
  CHECK(d.next.tried_finer);
  CHECK(d.next.best_micro_batches == 2);
  CHECK(d.next.best_step_seconds == 4.0);
}

TEST_CASE("balance: a trial that shortened the step is kept", "[balance]") {
  BalanceState s = decide_balance(running(2), measure(1.5, 2.0, 4.0), 0.05, 8).next;
  const BalanceDecision d = decide_balance(s, measure(1.6, 2.0, 3.5), 0.05, 8);
  CHECK(d.move == BalanceMove::keep);
  CHECK(d.imbalance == Approx(0.2));
  CHECK(d.next.micro_batches == 3);
  CHECK(d.next.best_micro_batches == 3);
  CHECK(d.next.best_step_seconds == 3.5);
  CHECK_FALSE(d.next.trial);
  // 2 lost against 3: from 3 only the finer neighbour is untried.
  CHECK(d.next.tried_coarser);
  CHECK_FALSE(d.next.tried_finer);
  const BalanceDecision again = decide_balance(d.next, measure(1.6, 2.0, 3.5), 0.05, 8);
  CHECK(again.move == BalanceMove::finer);
  CHECK(again.next.micro_batches == 4);
}

TEST_CASE("balance: a trial that did not shorten the step is reverted, then the other side is tried", "[balance]") {
  BalanceState s = decide_balance(running(2), measure(1.5, 2.0, 4.0), 0.05, 8).next;
  const BalanceDecision d = decide_balance(s, measure(1.5, 2.0, 4.0), 0.05, 8);  // equal is no gain
  CHECK(d.move == BalanceMove::revert);
  CHECK(d.next.micro_batches == 2);
  CHECK_FALSE(d.next.trial);
  const BalanceDecision other = decide_balance(d.next, measure(1.5, 2.0, 4.1), 0.05, 8);
  CHECK(other.move == BalanceMove::coarser);
  CHECK(other.next.micro_batches == 1);
  CHECK(other.next.best_step_seconds == 4.1);
  const BalanceDecision lost = decide_balance(other.next, measure(1.5, 2.0, 5.0), 0.05, 8);
  CHECK(lost.move == BalanceMove::revert);
  CHECK(lost.next.micro_batches == 2);
  // Both neighbours of 2 lost: the split stays however imbalanced.
  const BalanceDecision settled = decide_balance(lost.next, measure(1.0, 2.0, 4.0), 0.05, 8);
  CHECK(settled.move == BalanceMove::none);
  CHECK(settled.imbalance == Approx(0.5));
  CHECK(settled.next.micro_batches == 2);
}

TEST_CASE("balance: the split stays within one micro-batch and the sequences of an attention rank", "[balance]") {
  // At the most micro-batches only coarser is possible.
  const BalanceDecision top = decide_balance(running(4), measure(1.0, 2.0, 1.0), 0.05, 4);
  CHECK(top.move == BalanceMove::coarser);
  CHECK(top.next.micro_batches == 3);
  // One sequence per attention rank: nothing to re-split.
  const BalanceDecision one = decide_balance(running(1), measure(1.0, 2.0, 1.0), 0.05, 1);
  CHECK(one.move == BalanceMove::none);
  CHECK(one.next.micro_batches == 1);
}

TEST_CASE("balance: busy time counts the compute phases, not communication or waiting", "[balance]") {
  PhaseTable t(2);
  t.add(0, Phase::attn_core, 1.0);
  t.add(1, Phase::combine, 0.5);
  t.add(1, Phase::expert, 0.25);
  t.add(0, Phase::wait, 8.0);
  t.add(1, Phase::dispatch, 4.0);
  t.add(1, Phase::allreduce, 2.0);
  CHECK(busy_seconds(t) == Approx(1.75));
}
