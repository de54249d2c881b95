// Expert parallelism: rank i of the expert group holds experts [i*L, (i+1)*L). The routed
// rows arrive grouped by global expert, so each destination's rows are one contiguous
// block; an all-to-all of per-expert counts tells every rank what it will receive, an
// all-to-all-v moves the rows, and the same exchange reversed brings the results home.
//
//   xp [kept, d], counts[E]          (rows by global expert g = dest * L + e)
//   -> alltoall counts               counts_in[src * L + e]
//   -> alltoallv rows                x_in [received, d], by source rank then local expert
//   -> experts                        y_in [received, d]
//   -> alltoallv back                yp [kept, d] in xp's order
//
// Without an expert group (ep = 1) every rank routes all of its own tokens, and its experts'
// rows are one block of xp: all of it, or, when the ranks of an m x n group split the
// experts over tokens they all hold, its experts' share. They are computed in place; the
// other experts' rows of yp are zero here, and reduce_partial adds the group's shares.
#include <numeric>

#include "moeproxy/parallel/exchange.hpp"

#include "moeproxy/core/model.hpp"  // timed

namespace moeproxy::parallel {

ExpertTraffic LayoutExchange::traffic(const std::vector<int>& counts) {
  const int ranks = ep_.size(), local = local_experts_;
  ExpertTraffic t;
  t.local_experts = local;
  t.recv_expert_rows.assign(static_cast<std::size_t>(ranks) * local, 0);
  ep_.host().alltoall(counts.data(), t.recv_expert_rows.data(), local);
  t.send_rows.assign(ranks, 0);
  for (int r = 0; r < ranks; ++r)
    t.send_rows[r] = std::accumulate(counts.begin() + r * local, counts.begin() + (r + 1) * local, 0);
  return t;
}

ExpertRows LayoutExchange::dispatch(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts) {
  if (ep_.size() == 1) {
    const auto first = counts.begin() + expert_begin_, last = first + local_experts_;
    local_rows_.first = std::accumulate(counts.begin(), first, 0);
    local_rows_.second = local_rows_.first + std::accumulate(first, last, 0);
    return ExpertRows{Kokkos::subview(xp, local_rows_, Kokkos::ALL), std::vector<int>(first, last), local_rows_.first};
  }
  const int ranks = ep_.size(), local = local_experts_, d = static_cast<int>(xp.extent(1));
  const ExpertTraffic t = traffic(counts);
  send_counts_.assign(ranks, 0);
  recv_counts_.assign(ranks, 0);
  for (int r = 0; r < ranks; ++r) {
    send_counts_[r] = t.send_rows[r] * d;
    for (int e = 0; e < local; ++e) recv_counts_[r] += t.recv_expert_rows[r * local + e] * d;
  }
  send_displs_ = displacements(send_counts_);
  recv_displs_ = displacements(recv_counts_);
  const int received = (recv_displs_.back() + recv_counts_.back()) / d;

  Matrix x_in(Kokkos::view_alloc(space, "moeproxy::ep::expert_in"), received, d);
  ep_.alltoallv(xp.data(), send_counts_, send_displs_, x_in.data(), recv_counts_, recv_displs_);
  return ExpertRows{x_in, t.recv_expert_rows, -1};
}

void LayoutExchange::undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp) {
  if (ep_.size() == 1) {
    const int kept = static_cast<int>(yp.extent(0));
    Kokkos::deep_copy(space, Kokkos::subview(yp, std::make_pair(0, local_rows_.first), Kokkos::ALL), 0.0f);
    Kokkos::deep_copy(space, Kokkos::subview(yp, std::make_pair(local_rows_.second, kept), Kokkos::ALL), 0.0f);
    return;
  }
  ep_.alltoallv(y_in.data(), recv_counts_, recv_displs_, yp.data(), send_counts_, send_displs_);
}

void LayoutExchange::run_experts(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                                 const Matrix& yp, const ExpertCompute& compute, PhaseTable& timing, int layer) {
  if (ep_.size() == 1 || ep_chunks_ == 1) {
    LayerExchange::run_experts(space, xp, counts, yp, compute, timing, layer);
    return;
  }
  ExpertTraffic t;
  timed(space, timing, layer, Phase::dispatch, [&] { t = traffic(counts); });
  run_chunked_experts(space, ep_, t, ep_chunks_, xp, yp, compute, timing, layer);
}

}  // namespace moeproxy::parallel
