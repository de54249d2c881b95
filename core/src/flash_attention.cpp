// Causal attention over tiles of queries and keys with an online softmax (the flash-attention
// schedule, Dao et al. 2022). The per-query kernel in kernels.cpp reads a head's whole K and
// V once per query: prefill of n tokens reads them n times. Here a team takes a tile of
// queries of one (sequence, head), stages tiles of K and V in team scratch, and keeps a
// running maximum m, denominator l and unnormalised output O per query, so that K and V are
// read once per query tile and no [n, context] score matrix is ever stored:
//
//   for each key tile j:  S = Q K_j^T (masked causally)
//                         m' = max(m, rowmax S);  P = exp(S - m');  a = exp(m - m')
//                         l = a l + rowsum P;     O = a O + P V_j;  m = m'
//   out = O / l
//
// The scale is folded into Q when it is staged. Masked scores are a large negative finite
// value instead of -inf: the first key tile always holds position 0, which every query sees,
// so m is finite from then on and exp of a masked score underflows to exactly 0.
#include "moeproxy/core/kernels.hpp"

#include <algorithm>

namespace moeproxy {

namespace {

using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;
using ScratchMatrix = Kokkos::View<float**, Kokkos::LayoutRight, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
using ScratchVector = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;

constexpr float masked = -3.0e38f;

}  // namespace

template <class T>
void attention_tiled(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
                     const CacheOf<T>& v_cache, const Matrix& out, int n, int pos0, float scale, int head_begin,
                     int group) {
  const int batch = static_cast<int>(q.extent(0)) / n;
  const int hd = static_cast<int>(k_cache.extent(3));
  const int heads = static_cast<int>(q.extent(1)) / hd;
  const int kv_begin = head_begin / group;
  const int tile = attention_tile(hd);
  const int q_tiles = (n + tile - 1) / tile;
  const std::size_t scratch =
      4 * ScratchMatrix::shmem_size(tile, hd) + ScratchMatrix::shmem_size(tile, tile) + 3 * ScratchVector::shmem_size(tile);
  Kokkos::TeamPolicy<ExecSpace> policy(space, batch * heads * q_tiles, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(scratch));
  Kokkos::parallel_for(
      "moeproxy::kernels::attention_tiled", policy, KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        const int qt = t % q_tiles, h = (t / q_tiles) % heads, b = t / (q_tiles * heads);
        const int i0 = qt * tile, rows = n - i0 < tile ? n - i0 : tile;
        const int kvh = (head_begin + h) / group - kv_begin;
        ScratchMatrix qs(team.team_scratch(0), tile, hd), os(team.team_scratch(0), tile, hd),
            ks(team.team_scratch(0), tile, hd), vs(team.team_scratch(0), tile, hd),
            s(team.team_scratch(0), tile, tile);
        ScratchVector m(team.team_scratch(0), tile), l(team.team_scratch(0), tile), a(team.team_scratch(0), tile);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * hd), [&](const int x) {
          const int r = x / hd, dd = x % hd;
          qs(r, dd) = scale * q(b * n + i0 + r, h * hd + dd);
          os(r, dd) = 0.0f;
        });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int r) {
          m(r) = masked;
          l(r) = 0.0f;
        });
        // Keys past the tile's last query are masked for every row: stop there.
        const int ctx = pos0 + i0 + rows;
        for (int j0 = 0; j0 < ctx; j0 += tile) {
          const int cols = ctx - j0 < tile ? ctx - j0 : tile;
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols * hd), [&](const int x) {
            const int c = x / hd, dd = x % hd;
            ks(c, dd) = to_float(k_cache(b, kvh, j0 + c, dd));
            vs(c, dd) = to_float(v_cache(b, kvh, j0 + c, dd));
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * cols), [&](const int x) {
            const int r = x / cols, c = x % cols;
            float acc = masked;
            if (j0 + c <= pos0 + i0 + r) {
              acc = 0.0f;
              for (int dd = 0; dd < hd; ++dd) acc += qs(r, dd) * ks(c, dd);
            }
            s(r, c) = acc;
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int r) {
            float mx = m(r);
            for (int c = 0; c < cols; ++c) mx = s(r, c) > mx ? s(r, c) : mx;
            float sum = 0.0f;
            for (int c = 0; c < cols; ++c) sum += (s(r, c) = exp_f(s(r, c) - mx));
            a(r) = exp_f(m(r) - mx);
            l(r) = a(r) * l(r) + sum;
            m(r) = mx;
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * hd), [&](const int x) {
            const int r = x / hd, dd = x % hd;
            float acc = a(r) * os(r, dd);
            for (int c = 0; c < cols; ++c) acc += s(r, c) * vs(c, dd);
            os(r, dd) = acc;
          });
        }
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * hd), [&](const int x) {
          const int r = x / hd, dd = x % hd;
          out(b * n + i0 + r, h * hd + dd) = os(r, dd) / l(r);
        });
      });
}

template void attention_tiled<float>(const ExecSpace&, const ConstMatrix&, const CacheOf<float>&,
                                     const CacheOf<float>&, const Matrix&, int, int, float, int, int);
template void attention_tiled<Half>(const ExecSpace&, const ConstMatrix&, const CacheOf<Half>&,
                                    const CacheOf<Half>&, const Matrix&, int, int, float, int, int);

}  // namespace moeproxy
