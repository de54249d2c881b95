// Expert parallelism: rank i of the expert group holds the experts of its block of the
// layer's placement order (placement.hpp: [i*L, (i+1)*L) for the even split, any lists for
// parallel.expert_map). The routed rows arrive grouped by placement position, so each
// destination's rows are one contiguous block; an all-to-all of per-expert counts tells
// every rank what it will receive, an all-to-all-v moves the rows, and the same exchange
// reversed brings the results home.
//
//   xp [kept, d], counts[E]          (rows by placement position, rank by rank)
//   -> alltoall counts               counts_in[src * L + e]  (L: this rank's experts of the layer)
//   -> alltoallv rows                x_in [received, d], by source rank then local expert
//   -> experts                        y_in [received, d]
//   -> alltoallv back                yp [kept, d] in xp's order
//
// Both all-to-all-v move wire rows (compression.hpp): the rows themselves, or int8 rows
// encoded before and decoded after.
//
// Without an expert group (ep = 1) every rank routes all of its own tokens, and its experts'
// rows are one block of xp: all of it, or, when the ranks of an m x n group split the
// experts over tokens they all hold, its experts' share. They are computed in place; the
// other experts' rows of yp are zero here, and reduce_partial adds the group's shares.
#include <numeric>

#include "moeproxy/parallel/exchange.hpp"

namespace moeproxy::parallel {

ExpertRows LayoutExchange::dispatch(const ExecSpace& space, int layer, const Matrix& xp,
                                    const std::vector<int>& counts) {
  const int local = placement_.count(layer, placement_rank_);
  if (ep_.size() == 1) {
    const auto first = counts.begin() + placement_.first(layer, placement_rank_), last = first + local;
    local_rows_.first = std::accumulate(counts.begin(), first, 0);
    local_rows_.second = local_rows_.first + std::accumulate(first, last, 0);
    return ExpertRows{Kokkos::subview(xp, local_rows_, Kokkos::ALL), std::vector<int>(first, last), local_rows_.first};
  }
  const int ranks = ep_.size(), d = static_cast<int>(xp.extent(1));
  // Ranks may hold different numbers of experts: counts travel padded to the largest block.
  const int width = placement_.max_count(layer);
  std::vector<int> counts_out(static_cast<std::size_t>(ranks) * width, 0), counts_padded(counts_out.size());
  row_send_counts_.assign(ranks, 0);
  for (int r = 0, position = 0; r < ranks; ++r)
    for (int e = 0; e < placement_.count(layer, r); ++e, ++position) {
      counts_out[r * width + e] = counts[position];
      row_send_counts_[r] += counts[position];
    }
  ep_.host().alltoall(counts_out.data(), counts_padded.data(), width);

  const int wire = codec_.wire_width(d);
  std::vector<int> counts_in(static_cast<std::size_t>(ranks) * local, 0);
  row_recv_counts_.assign(ranks, 0);
  send_counts_.assign(ranks, 0);
  recv_counts_.assign(ranks, 0);
  for (int r = 0; r < ranks; ++r) {
    for (int e = 0; e < local; ++e) {
      counts_in[r * local + e] = counts_padded[r * width + e];
      row_recv_counts_[r] += counts_in[r * local + e];
    }
    send_counts_[r] = row_send_counts_[r] * wire;
    recv_counts_[r] = row_recv_counts_[r] * wire;
    row_send_counts_[r] *= d;
    row_recv_counts_[r] *= d;
  }
  send_displs_ = displacements(send_counts_);
  recv_displs_ = displacements(recv_counts_);
  const int received = (recv_displs_.back() + recv_counts_.back()) / wire;

  Matrix x_in(Kokkos::view_alloc(space, "moeproxy::ep::expert_in"), received, d);
  const Matrix wire_in = codec_.receive_buffer(x_in);
  ep_.alltoallv(codec_.encode(space, xp).data(), send_counts_, send_displs_, wire_in.data(), recv_counts_,
                recv_displs_, row_send_counts_);
  codec_.decode(space, wire_in, x_in);
  return ExpertRows{x_in, counts_in, -1};
}

void LayoutExchange::undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp) {
  if (ep_.size() == 1) {
    const int kept = static_cast<int>(yp.extent(0));
    Kokkos::deep_copy(space, Kokkos::subview(yp, std::make_pair(0, local_rows_.first), Kokkos::ALL), 0.0f);
    Kokkos::deep_copy(space, Kokkos::subview(yp, std::make_pair(local_rows_.second, kept), Kokkos::ALL), 0.0f);
    return;
  }
  const Matrix wire_out = codec_.receive_buffer(yp);
  ep_.alltoallv(codec_.encode(space, y_in).data(), recv_counts_, recv_displs_, wire_out.data(), send_counts_,
                send_displs_, row_recv_counts_);
  codec_.decode(space, wire_out, yp);
}

}  // namespace moeproxy::parallel
