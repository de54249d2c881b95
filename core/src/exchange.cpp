#include "moeproxy/core/exchange.hpp"

#include <utility>

#include "moeproxy/core/model.hpp"  // timed

namespace moeproxy {

void LayerExchange::reduce_partial(const ExecSpace&, const Matrix&) {}

std::uint64_t LayerExchange::buffer_bytes() const { return expert_out_.span() * sizeof(float); }

void LayerExchange::reduce_scores(const ExecSpace&, const Scores&) {}

ExpertRows LayerExchange::dispatch(const ExecSpace&, int, const Matrix& xp, const std::vector<int>& counts) {
  return ExpertRows{xp, counts, 0};
}

// Every expert is local: dispatch handed over all of xp, whose outputs went straight to yp.
void LayerExchange::undispatch(const ExecSpace&, const Matrix&, const Matrix&) {}

void LayerExchange::timed_reduce_partial(const ExecSpace& space, const Matrix& partial, PhaseTable& timing,
                                         int layer) {
  if (partial_group_size() > 1) timed(space, timing, layer, Phase::allreduce, [&] { reduce_partial(space, partial); });
}

void LayerExchange::timed_reduce_scores(const ExecSpace& space, const Scores& scores, PhaseTable& timing, int layer) {
  if (score_group_size() > 1) timed(space, timing, layer, Phase::allreduce, [&] { reduce_scores(space, scores); });
}

void LayerExchange::run_experts(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                                const Matrix& yp, const ExpertCompute& compute, PhaseTable& timing, int layer) {
  const bool travels = expert_group_size() > 1;
  ExpertRows in;
  if (travels)
    timed(space, timing, layer, Phase::dispatch, [&] { in = dispatch(space, layer, xp, counts); });
  else
    in = dispatch(space, layer, xp, counts);
  const int received = static_cast<int>(in.x.extent(0));
  // Rows computed where they lie in xp write their outputs straight into yp.
  const Matrix y_in =
      in.xp_row >= 0
          ? Matrix(Kokkos::subview(yp, std::make_pair(in.xp_row, in.xp_row + received), Kokkos::ALL))
          : reserved_rows(expert_out_, received, static_cast<int>(xp.extent(1)), "moeproxy::model::expert_out");
  compute(in.x, in.counts, y_in);
  if (travels)
    timed(space, timing, layer, Phase::dispatch, [&] { undispatch(space, y_in, yp); });
  else if (received < static_cast<int>(xp.extent(0)))
    timed(space, timing, layer, Phase::expert, [&] { undispatch(space, y_in, yp); });
}

}  // namespace moeproxy
