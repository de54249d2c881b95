#include "moeproxy/parallel/balance.hpp"

#include <algorithm>

namespace moeproxy::parallel {

const char* balance_move_name(BalanceMove move) {
  switch (move) {
    case BalanceMove::none: return "none";
    case BalanceMove::finer: return "finer";
    case BalanceMove::coarser: return "coarser";
    case BalanceMove::keep: return "keep";
    case BalanceMove::revert: return "revert";
  }
  return "?";
}

double side_imbalance(double attention_busy, double ffn_busy) {
  const double busier = std::max(attention_busy, ffn_busy), idler = std::min(attention_busy, ffn_busy);
  return busier > 0.0 ? (busier - idler) / busier : 0.0;
}

BalanceDecision decide_balance(const BalanceState& state, const BalanceMeasure& measure, double threshold,
                               int max_micro_batches) {
  BalanceDecision d;
  d.imbalance = side_imbalance(measure.attention_busy, measure.ffn_busy);
  BalanceState& next = d.next;
  next = state;
  if (state.trial) {
    next.trial = false;
    if (measure.step_seconds < state.best_step_seconds) {
      d.move = BalanceMove::keep;
      // The split it replaced is the new best's neighbour on that side, and it lost.
      const bool came_finer = state.micro_batches > state.best_micro_batches;
      next.best_micro_batches = state.micro_batches;
      next.best_step_seconds = measure.step_seconds;
      next.tried_finer = !came_finer;
      next.tried_coarser = came_finer;
    } else {
      d.move = BalanceMove::revert;
      next.micro_batches = state.best_micro_batches;
    }
    return d;
  }
  // The latest measurement of the running (best) split is the baseline a trial must beat.
  next.best_micro_batches = state.micro_batches;
  next.best_step_seconds = measure.step_seconds;
  if (d.imbalance <= threshold) return d;
  if (!state.tried_finer && state.micro_batches < max_micro_batches) {
    d.move = BalanceMove::finer;
    next.micro_batches = state.micro_batches + 1;
    next.tried_finer = true;
  } else if (!state.tried_coarser && state.micro_batches > 1) {
    d.move = BalanceMove::coarser;
    next.micro_batches = state.micro_batches - 1;
    next.tried_coarser = true;
  } else {
    return d;
  }
  next.trial = true;
  return d;
}

double busy_seconds(const PhaseTable& table) {
  double s = 0.0;
  for (int l = 0; l < table.layers(); ++l)
    for (Phase p : {Phase::norm, Phase::attn_qkv, Phase::attn_core, Phase::attn_out, Phase::router, Phase::permute,
                    Phase::expert, Phase::combine, Phase::ffn})
      s += table.at(l, p);
  return s;
}

Balancer::Balancer(const RunConfig& cfg, const RankLayout& layout, Communicator& world, Separation& separation)
    : world_(world), separation_(separation), attention_side_(world.rank() < cfg.parallel.attn_ranks),
      max_micro_batches_(layout.sequences_of(0).count) {
  state_.micro_batches = state_.best_micro_batches = separation.micro_batches();
  log_.threshold = cfg.parallel.balance_threshold;
  log_.interval = cfg.parallel.balance_interval;
}

void Balancer::after_step(int step, const PhaseTable& decode) {
  if (++steps_in_interval_ < log_.interval) return;
  const double busy = busy_seconds(decode);
  // Per side the busiest rank paces it; the slowest rank's wall is the step's.
  double figures[3] = {attention_side_ ? busy - busy_at_start_ : 0.0, attention_side_ ? 0.0 : busy - busy_at_start_,
                       interval_timer_.seconds()};
  world_.allreduce_max(figures, 3);
  BalanceMeasure measure;
  measure.attention_busy = figures[0] / steps_in_interval_;
  measure.ffn_busy = figures[1] / steps_in_interval_;
  measure.step_seconds = figures[2] / steps_in_interval_;
  const BalanceDecision d = decide_balance(state_, measure, log_.threshold, max_micro_batches_);

  BalanceCheck check;
  check.step = step + 1;
  check.micro_batches = state_.micro_batches;
  check.attention_busy = measure.attention_busy;
  check.ffn_busy = measure.ffn_busy;
  check.imbalance = d.imbalance;
  check.step_seconds = measure.step_seconds;
  check.action = balance_move_name(d.move);
  check.next_micro_batches = d.next.micro_batches;
  log_.checks.push_back(check);
  if (d.move == BalanceMove::keep || d.move == BalanceMove::revert) {
    BalanceTrial& t = log_.trials.back();
    t.imbalance_after = d.imbalance;
    t.step_seconds_after = measure.step_seconds;
    t.verdict = d.move == BalanceMove::keep ? "kept" : "reverted";
  }
  if (d.move == BalanceMove::finer || d.move == BalanceMove::coarser) {
    BalanceTrial t;
    t.step = check.step;
    t.from_micro_batches = state_.micro_batches;
    t.to_micro_batches = d.next.micro_batches;
    t.imbalance_before = d.imbalance;
    t.step_seconds_before = measure.step_seconds;
    log_.trials.push_back(t);
  }
  if (d.next.micro_batches != state_.micro_batches) separation_.split(d.next.micro_batches);
  state_ = d.next;
  busy_at_start_ = busy;
  steps_in_interval_ = 0;
  interval_timer_.reset();
}

}  // namespace moeproxy::parallel
