#pragma once
// Balancing the two sides of attention/MoE separation during decode (seed 002's "load
// balancing threshold"). Each side's busy time is its compute (attention half and combine on
// the attention ranks, the experts on the FFN ranks), not its waiting. Every
// parallel.balance_interval decode steps all ranks agree on both sides' busy time and the
// step wall; when (busier - idler) / busier exceeds parallel.balance_threshold they re-split
// the decode micro-batches one at a time: more micro-batches shorten the stretch in which
// one side waits for the other's first (fill) or last (drain) micro-batch, fewer save
// per-micro-batch overheads. A re-split is a trial: the next check keeps it if the decode
// step got faster and reverts it otherwise; once both neighbours of the best split lost, the
// split stays. Busy times are a property of the rank split, which only a relaunch changes:
// the performance model suggests one (suggest_attention_split in core/perf_model.hpp).

#include "moeproxy/core/metrics.hpp"
#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/layout.hpp"
#include "moeproxy/parallel/separation.hpp"

#include <Kokkos_Core.hpp>

namespace moeproxy::parallel {

enum class BalanceMove { none, finer, coarser, keep, revert };
const char* balance_move_name(BalanceMove move);

// What the balancer remembers from one check to the next.
struct BalanceState {
  int micro_batches = 1;       // the split running now
  int best_micro_batches = 1;  // the best split judged so far
  double best_step_seconds = 0.0;
  bool trial = false;  // micro_batches is on trial against best_micro_batches
  bool tried_finer = false, tried_coarser = false;  // the best split's neighbours
};

// One interval's agreed figures, per decode step.
struct BalanceMeasure {
  double attention_busy = 0.0, ffn_busy = 0.0, step_seconds = 0.0;
};

struct BalanceDecision {
  BalanceMove move = BalanceMove::none;
  double imbalance = 0.0;
  BalanceState next;
};

// (busier - idler) / busier; 0 when both sides are idle.
double side_imbalance(double attention_busy, double ffn_busy);

// The decision at one check: judge a pending trial, else start one when the imbalance
// exceeds `threshold`. Splits stay within [1, max_micro_batches] (the sequences of an
// attention rank). Pure: every rank computes it from the same agreed figures.
BalanceDecision decide_balance(const BalanceState& state, const BalanceMeasure& measure, double threshold,
                               int max_micro_batches);

// The compute phases of a phase table, summed over layers: what a side is busy with.
double busy_seconds(const PhaseTable& table);

class Balancer {
 public:
  // Collective over `world` from the first check on; `separation` is re-split between steps.
  Balancer(const RunConfig& cfg, const RankLayout& layout, Communicator& world, Separation& separation);

  // After every decode step, on every rank: `decode` is this rank's accumulated decode table.
  void after_step(int step, const PhaseTable& decode);

  const BalanceLog& log() const { return log_; }

 private:
  Communicator& world_;
  Separation& separation_;
  bool attention_side_;
  int max_micro_batches_;
  BalanceState state_;
  BalanceLog log_;
  double busy_at_start_ = 0.0;
  int steps_in_interval_ = 0;
  Kokkos::Timer interval_timer_;
};

}  // namespace moeproxy::parallel
