#pragma once
// Where one layer's data meets other ranks. The forward pass calls these at fixed points;
// parallel/ implements them with MPI for its layouts. The defaults are what a rank holding
// the whole model does: nothing to reduce, every expert local. core/ knows nothing of MPI.

#include <cstdint>
#include <functional>
#include <vector>

#include "moeproxy/core/metrics.hpp"
#include "moeproxy/core/types.hpp"

namespace moeproxy {

// The rows a rank's experts compute, as LayerExchange::dispatch hands them over.
struct ExpertRows {
  Matrix x;                 // [rows, d], grouped by source rank then local expert
  std::vector<int> counts;  // counts[src * local_experts + e] rows each
  // >= 0: x is rows [xp_row, xp_row + rows) of the dispatched xp itself (nothing moved), and
  // their outputs belong in the same rows of yp; -1: x arrived from other ranks.
  int xp_row = -1;
};

// The local experts on rows x [rows, d], counts[src * local_experts + e] rows per block in
// order, into y [rows, d] (Transformer::ffn_rows).
using ExpertCompute = std::function<void(const Matrix& x, const std::vector<int>& counts, const Matrix& y)>;

class LayerExchange {
 public:
  virtual ~LayerExchange() = default;

  // Sums `partial` [T, d] in place over the ranks that hold other slices of the same
  // tokens' weights (tensor parallelism: row-parallel output projections).
  virtual void reduce_partial(const ExecSpace& space, const Matrix& partial);

  // Sums the partial attention scores [T, heads, context] in place over the ranks holding
  // the other slices of the same heads' dimensions (intra-head slicing), before the softmax.
  virtual void reduce_scores(const ExecSpace& space, const Scores& scores);

  // The experts' rows of layer `layer`. `xp` holds the routed rows grouped by expert in the
  // layer's placement order (placement.hpp; the ids' order without one), `counts[p]` rows
  // of position p. Returns the rows of the experts this rank holds: with expert
  // parallelism those every rank of the expert group routed to them; otherwise the block
  // of xp's own rows that belongs to them.
  virtual ExpertRows dispatch(const ExecSpace& space, int layer, const Matrix& xp, const std::vector<int>& counts);
  // Completes yp [kept, d] in xp's order from the expert outputs `y_in` (laid out as
  // dispatch returned them): brings rows back from the ranks they went to, or fills in the
  // rows no local expert computed (zero: another rank's partial sum holds them).
  virtual void undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp);
  // The experts' part of layer `layer`'s MoE step: the routed rows xp [kept, d] (grouped by
  // global expert, counts[e] rows of expert e) through their experts, wherever they are
  // held, into yp [kept, d] in xp's order. The default is dispatch -> compute ->
  // undispatch, communication timed as Phase::dispatch; a layout may interleave them.
  // Without an expert group nothing travels: dispatch is bookkeeping, and undispatch (the
  // zeros of the other experts' rows, if any) counts as the experts' work.
  virtual void run_experts(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                           const Matrix& yp, const ExpertCompute& compute, PhaseTable& timing, int layer);
  // Ranks the experts are spread over (1: all local).
  virtual int expert_group_size() const { return 1; }
  // Ranks reduce_partial sums over (1: it does nothing).
  virtual int partial_group_size() const { return 1; }
  // Ranks reduce_scores sums over (1: it does nothing).
  virtual int score_group_size() const { return 1; }
  // Bytes of the buffers it keeps for rows to and from other ranks (memory kind comm_buffers).
  virtual std::uint64_t buffer_bytes() const;

  // reduce_partial / reduce_scores timed as Phase::allreduce where there are ranks to sum
  // over, and not timed at all where there are none: the timer's fence around nothing cost
  // 3-5 us a call on the CPU VM and showed communication in layouts without any.
  void timed_reduce_partial(const ExecSpace& space, const Matrix& partial, PhaseTable& timing, int layer);
  void timed_reduce_scores(const ExecSpace& space, const Scores& scores, PhaseTable& timing, int layer);

 protected:
  // The outputs of the rows other ranks sent this rank's experts: grown to the largest
  // layer's and kept across layers and passes. A buffer allocated per layer faulted in fresh
  // pages every time: 3-4 ms a MiB on the AMD VM of 2026-12-07, a sixth of the medium deck's
  // prefill at dp = ep = 2, outside every timed phase.
  Matrix expert_out_;
};

}  // namespace moeproxy
