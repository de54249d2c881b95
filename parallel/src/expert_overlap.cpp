#include "moeproxy/parallel/expert_overlap.hpp"

#include <algorithm>
#include <numeric>
#include <utility>

#include "moeproxy/core/model.hpp"  // timed

namespace moeproxy::parallel {

namespace {

// Piece c of a block of n rows cut into `chunks`: rows [first_row(n, c), first_row(n, c + 1)).
int first_row(int n, int c, int chunks) {
  return static_cast<int>(static_cast<long long>(n) * c / chunks);
}

// One chunk's all-to-all-v, in floats per rank: the dispatch sends xp -> slab and the
// combine the same in reverse, slab -> yp.
struct Chunk {
  std::vector<int> xp_counts, xp_displs;      // displacements from the front of xp (yp)
  std::vector<int> slab_counts, slab_displs;  // displacements from the front of x_in (y_in)
  std::vector<int> expert_rows;               // [src * local + e]: the slab's blocks
  int first = 0, rows = 0;                    // the slab's rows of x_in (y_in)
};

std::vector<Chunk> cut(const ExpertTraffic& t, int chunks, int d) {
  const int ranks = static_cast<int>(t.send_rows.size()), local = t.local_experts;
  const std::vector<int> send_first = displacements(t.send_rows);
  std::vector<int> recv_rows(ranks, 0);
  for (int s = 0; s < ranks; ++s)
    recv_rows[s] = std::accumulate(t.recv_expert_rows.begin() + s * local,
                                   t.recv_expert_rows.begin() + (s + 1) * local, 0);
  std::vector<Chunk> out(chunks);
  int row = 0;
  for (int c = 0; c < chunks; ++c) {
    Chunk& k = out[c];
    k.first = row;
    for (int r = 0; r < ranks; ++r) {
      const int b0 = first_row(t.send_rows[r], c, chunks), b1 = first_row(t.send_rows[r], c + 1, chunks);
      k.xp_counts.push_back((b1 - b0) * d);
      k.xp_displs.push_back((send_first[r] + b0) * d);
    }
    for (int s = 0; s < ranks; ++s) {
      const int b0 = first_row(recv_rows[s], c, chunks), b1 = first_row(recv_rows[s], c + 1, chunks);
      k.slab_counts.push_back((b1 - b0) * d);
      k.slab_displs.push_back((row - k.first) * d);
      row += b1 - b0;
      // The source's block is its rows for local expert 0, then 1, ...: the piece's share of each.
      int expert_first = 0;
      for (int e = 0; e < local; ++e) {
        const int n = t.recv_expert_rows[s * local + e];
        k.expert_rows.push_back(std::max(0, std::min(b1, expert_first + n) - std::max(b0, expert_first)));
        expert_first += n;
      }
    }
    k.rows = row - k.first;
  }
  return out;
}

}  // namespace

void run_chunked_experts(const ExecSpace& space, DeviceComm& ep, const ExpertTraffic& traffic, int chunks,
                         const Matrix& xp, const Matrix& yp, const ExpertCompute& compute, PhaseTable& timing,
                         int layer) {
  const int d = static_cast<int>(xp.extent(1));
  const std::vector<Chunk> plan = cut(traffic, chunks, d);
  const int received = plan.back().first + plan.back().rows;
  const Matrix x_in(Kokkos::view_alloc(space, "moeproxy::ep::expert_in"), received, d);
  const Matrix y_in(Kokkos::view_alloc(space, "moeproxy::ep::expert_out"), received, d);
  auto slab = [](const Matrix& m, const Chunk& k) {
    return Matrix(Kokkos::subview(m, std::make_pair(k.first, k.first + k.rows), Kokkos::ALL));
  };
  auto communicate = [&](auto&& work) { timed(space, timing, layer, Phase::dispatch, work); };
  auto dispatch = [&](const Chunk& k) {
    return ep.ialltoallv(xp.data(), k.xp_counts, k.xp_displs, slab(x_in, k).data(), k.slab_counts, k.slab_displs);
  };

  std::vector<DeviceComm::Ticket> dispatched(chunks), combined(chunks);
  communicate([&] { dispatched[0] = dispatch(plan[0]); });
  for (int c = 0; c < chunks; ++c) {
    const Chunk& k = plan[c];
    communicate([&] {
      if (c + 1 < chunks) dispatched[c + 1] = dispatch(plan[c + 1]);
      ep.wait(dispatched[c]);
    });
    compute(slab(x_in, k), k.expert_rows, slab(y_in, k));
    communicate([&] {
      // Right after the compute: when the transfers behind it were seen complete.
      if (c + 1 < chunks) ep.test(dispatched[c + 1]);
      if (c > 0) ep.test(combined[c - 1]);
      combined[c] = ep.ialltoallv(slab(y_in, k).data(), k.slab_counts, k.slab_displs, yp.data(), k.xp_counts,
                                  k.xp_displs);
    });
  }
  communicate([&] {
    for (const DeviceComm::Ticket t : combined) ep.wait(t);
  });
}

}  // namespace moeproxy::parallel
