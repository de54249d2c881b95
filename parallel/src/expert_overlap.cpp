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

// One chunk's all-to-all-v, in rows per rank: the dispatch sends xp -> slab and the combine
// the same in reverse, slab -> yp.
struct Chunk {
  std::vector<int> xp_rows, xp_first;      // row offsets from the front of xp (yp)
  std::vector<int> slab_rows, slab_first;  // row offsets from the front of the slab
  std::vector<int> expert_rows;            // [src * local + e]: the slab's blocks
  int first = 0, rows = 0;                 // the slab's rows of x_in (y_in)
};

std::vector<int> scaled(const std::vector<int>& rows, int width) {
  std::vector<int> floats(rows.size());
  std::transform(rows.begin(), rows.end(), floats.begin(), [width](int n) { return n * width; });
  return floats;
}

std::vector<Chunk> cut(const ExpertTraffic& t, int chunks) {
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
      k.xp_rows.push_back(b1 - b0);
      k.xp_first.push_back(send_first[r] + b0);
    }
    for (int s = 0; s < ranks; ++s) {
      const int b0 = first_row(recv_rows[s], c, chunks), b1 = first_row(recv_rows[s], c + 1, chunks);
      k.slab_rows.push_back(b1 - b0);
      k.slab_first.push_back(row - k.first);
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

void run_chunked_experts(const ExecSpace& space, DeviceComm& ep, RowCodec& codec, const ExpertTraffic& traffic,
                         int chunks, const Matrix& xp, const Matrix& yp, const ExpertCompute& compute,
                         PhaseTable& timing, int layer, ChunkBuffers& buffers) {
  const int d = static_cast<int>(xp.extent(1)), wire = codec.wire_width(d);
  const std::vector<Chunk> plan = cut(traffic, chunks);
  const int received = plan.back().first + plan.back().rows;
  const Matrix x_in = reserved_rows(buffers.x_in, received, d, "moeproxy::ep::expert_in");
  const Matrix y_in = reserved_rows(buffers.y_in, received, d, "moeproxy::model::expert_out");
  auto slab = [](const Matrix& m, const Chunk& k) {
    return Matrix(Kokkos::subview(m, std::make_pair(k.first, k.first + k.rows), Kokkos::ALL));
  };
  // What the records count as uncompressed: the row floats, when the wire floats differ.
  auto uncompressed = [&](const std::vector<int>& rows) {
    return codec.compresses() ? scaled(rows, d) : std::vector<int>{};
  };
  auto communicate = [&](auto&& work) { timed(space, timing, layer, Phase::dispatch, work); };

  Matrix x_send, x_wire, y_wire, yp_wire;
  communicate([&] {
    x_send = codec.encode(space, xp);
    x_wire = codec.wire_buffer(buffers.x_wire, x_in, "moeproxy::ep::expert_in_wire");
    y_wire = codec.wire_buffer(buffers.y_wire, y_in, "moeproxy::ep::expert_out_wire");
    yp_wire = codec.wire_buffer(buffers.yp_wire, yp, "moeproxy::ep::combined_wire");
  });
  auto dispatch = [&](const Chunk& k) {
    return ep.ialltoallv(x_send.data(), scaled(k.xp_rows, wire), scaled(k.xp_first, wire), slab(x_wire, k).data(),
                         scaled(k.slab_rows, wire), scaled(k.slab_first, wire), uncompressed(k.xp_rows));
  };

  std::vector<DeviceComm::Ticket> dispatched(chunks), combined(chunks);
  communicate([&] { dispatched[0] = dispatch(plan[0]); });
  for (int c = 0; c < chunks; ++c) {
    const Chunk& k = plan[c];
    communicate([&] {
      if (c + 1 < chunks) dispatched[c + 1] = dispatch(plan[c + 1]);
      ep.wait(dispatched[c]);
      codec.decode(space, slab(x_wire, k), slab(x_in, k));
    });
    compute(slab(x_in, k), k.expert_rows, slab(y_in, k));
    communicate([&] {
      // Right after the compute: when the transfers behind it were seen complete.
      if (c + 1 < chunks) ep.test(dispatched[c + 1]);
      if (c > 0) ep.test(combined[c - 1]);
      codec.encode_into(space, slab(y_in, k), slab(y_wire, k));
      combined[c] = ep.ialltoallv(slab(y_wire, k).data(), scaled(k.slab_rows, wire), scaled(k.slab_first, wire),
                                  yp_wire.data(), scaled(k.xp_rows, wire), scaled(k.xp_first, wire),
                                  uncompressed(k.slab_rows));
    });
  }
  communicate([&] {
    for (const DeviceComm::Ticket t : combined) ep.wait(t);
    codec.decode(space, yp_wire, yp);
  });
}

}  // namespace moeproxy::parallel
