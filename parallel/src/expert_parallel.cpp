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
// encoded before and decoded after. With parallel.ep_chunks > 1 the same traffic moves in
// pieces overlapped with the experts (expert_overlap.hpp).
//
// Without an expert group (ep = 1) every rank routes all of its own tokens, and its experts'
// rows are one block of xp: all of it, or, when the ranks of an m x n group split the
// experts over tokens they all hold, its experts' share. They are computed in place; the
// other experts' rows of yp are zero here, and reduce_partial adds the group's shares.
#include <numeric>

#include "moeproxy/parallel/exchange.hpp"

#include "moeproxy/core/model.hpp"  // timed

namespace moeproxy::parallel {

ExpertTraffic LayoutExchange::traffic(int layer, const std::vector<int>& counts) {
  const int ranks = ep_.size(), local = placement_.count(layer, placement_rank_);
  // Ranks may hold different numbers of experts: counts travel padded to the largest block.
  const int width = placement_.max_count(layer);
  std::vector<int> counts_out(static_cast<std::size_t>(ranks) * width, 0), counts_padded(counts_out.size());
  ExpertTraffic t;
  t.local_experts = local;
  t.send_rows.assign(ranks, 0);
  for (int r = 0, position = 0; r < ranks; ++r)
    for (int e = 0; e < placement_.count(layer, r); ++e, ++position) {
      counts_out[r * width + e] = counts[position];
      t.send_rows[r] += counts[position];
    }
  ep_.host().alltoall(counts_out.data(), counts_padded.data(), width);
  t.recv_expert_rows.assign(static_cast<std::size_t>(ranks) * local, 0);
  for (int r = 0; r < ranks; ++r)
    for (int e = 0; e < local; ++e) t.recv_expert_rows[r * local + e] = counts_padded[r * width + e];
  return t;
}

ExpertRows LayoutExchange::dispatch(const ExecSpace& space, int layer, const Matrix& xp,
                                    const std::vector<int>& counts) {
  const int local = placement_.count(layer, placement_rank_);
  if (ep_.size() == 1) {
    const auto first = counts.begin() + placement_.first(layer, placement_rank_), last = first + local;
    local_rows_.first = std::accumulate(counts.begin(), first, 0);
    local_rows_.second = local_rows_.first + std::accumulate(first, last, 0);
    return ExpertRows{Kokkos::subview(xp, local_rows_, Kokkos::ALL), std::vector<int>(first, last), local_rows_.first};
  }
  const int ranks = ep_.size(), d = static_cast<int>(xp.extent(1)), wire = codec_.wire_width(d);
  const ExpertTraffic t = traffic(layer, counts);
  row_send_counts_.assign(ranks, 0);
  row_recv_counts_.assign(ranks, 0);
  send_counts_.assign(ranks, 0);
  recv_counts_.assign(ranks, 0);
  for (int r = 0; r < ranks; ++r) {
    const int in = std::accumulate(t.recv_expert_rows.begin() + r * local, t.recv_expert_rows.begin() + (r + 1) * local, 0);
    send_counts_[r] = t.send_rows[r] * wire;
    recv_counts_[r] = in * wire;
    row_send_counts_[r] = t.send_rows[r] * d;
    row_recv_counts_[r] = in * d;
  }
  send_displs_ = displacements(send_counts_);
  recv_displs_ = displacements(recv_counts_);
  const int received = (recv_displs_.back() + recv_counts_.back()) / wire;

  const Matrix x_in = reserved_rows(expert_in_, received, d, "moeproxy::ep::expert_in");
  const Matrix wire_in = codec_.receive_buffer(x_in);
  ep_.alltoallv(codec_.encode(space, xp).data(), send_counts_, send_displs_, wire_in.data(), recv_counts_,
                recv_displs_, row_send_counts_);
  codec_.decode(space, wire_in, x_in);
  return ExpertRows{x_in, t.recv_expert_rows, -1};
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

std::uint64_t LayoutExchange::buffer_bytes() const {
  const ChunkBuffers& c = chunk_buffers_;
  std::size_t floats = expert_in_.span();
  for (const Matrix* m : {&c.x_wire, &c.y_wire, &c.yp_wire}) floats += m->span();
  return LayerExchange::buffer_bytes() + floats * sizeof(float) + codec_.buffer_bytes();
}

void LayoutExchange::run_experts(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                                 const Matrix& yp, const ExpertCompute& compute, PhaseTable& timing, int layer) {
  if (ep_.size() == 1 || ep_chunks_ == 1) {
    LayerExchange::run_experts(space, xp, counts, yp, compute, timing, layer);
    return;
  }
  ExpertTraffic t;
  timed(space, timing, layer, Phase::dispatch, [&] { t = traffic(layer, counts); });
  run_chunked_experts(space, ep_, codec_, t, ep_chunks_, xp, yp, compute, timing, layer, chunk_buffers_);
}

}  // namespace moeproxy::parallel
