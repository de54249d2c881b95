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

#include "attention_blocks.hpp"

namespace moeproxy {

namespace {

using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;
using ScratchMatrix = Kokkos::View<float**, Kokkos::LayoutRight, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
using ScratchVector = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;

constexpr float masked = -3.0e38f;

// scores[k] = q . keys[. * stride + k] over hd dimensions, for a block of adjacent keys.
KOKKOS_INLINE_FUNCTION void scores_of_block(const float* q, const float* keys, int stride, int hd, float* scores) {
  float acc[attention_block] = {};
  for (int dd = 0; dd < hd; ++dd)
    for (int k = 0; k < attention_block; ++k) acc[k] += q[dd] * keys[dd * stride + k];
  for (int k = 0; k < attention_block; ++k) scores[k] = acc[k];
}

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
  // K is staged transposed, kt(dd, c), so that a block of adjacent keys' scores reads adjacent
  // floats; rows of scores and of V and O are padded to whole blocks with zeros.
  const int tile_pad = padded_to_blocks(tile), hd_pad = padded_to_blocks(hd);
  // Staging and the output's update take a block of elements an index: on a CPU the division
  // of an index is then not per element.
  const int key_blocks = blocks_of(tile), dim_blocks = blocks_of(hd);
  const std::size_t scratch = ScratchMatrix::shmem_size(tile, hd) + 2 * ScratchMatrix::shmem_size(tile, hd_pad) +
                              ScratchMatrix::shmem_size(hd, tile_pad) + ScratchMatrix::shmem_size(tile, tile_pad) +
                              3 * ScratchVector::shmem_size(tile);
  Kokkos::TeamPolicy<ExecSpace> policy(space, batch * heads * q_tiles, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(scratch));
  Kokkos::parallel_for(
      "moeproxy::kernels::attention_tiled", policy, KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        const int qt = t % q_tiles, h = (t / q_tiles) % heads, b = t / (q_tiles * heads);
        const int i0 = qt * tile, rows = n - i0 < tile ? n - i0 : tile;
        const int kvh = (head_begin + h) / group - kv_begin;
        ScratchMatrix qs(team.team_scratch(0), tile, hd), os(team.team_scratch(0), tile, hd_pad),
            kt(team.team_scratch(0), hd, tile_pad), vs(team.team_scratch(0), tile, hd_pad),
            s(team.team_scratch(0), tile, tile_pad);
        ScratchVector m(team.team_scratch(0), tile), l(team.team_scratch(0), tile), a(team.team_scratch(0), tile);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * hd), [&](const int x) {
          const int r = x / hd, dd = x % hd;
          qs(r, dd) = scale * q(b * n + i0 + r, h * hd + dd);
        });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * hd_pad),
                             [&](const int x) { os(x / hd_pad, x % hd_pad) = 0.0f; });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int r) {
          m(r) = masked;
          l(r) = 0.0f;
        });
        // Keys past the tile's last query are masked for every row: stop there.
        const int ctx = pos0 + i0 + rows;
        for (int j0 = 0; j0 < ctx; j0 += tile) {
          const int cols = ctx - j0 < tile ? ctx - j0 : tile;
          const int col_blocks = blocks_of(cols);
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, hd * key_blocks), [&](const int x) {
            const int dd = x / key_blocks, c0 = (x % key_blocks) * attention_block;
            for (int c = c0; c < c0 + attention_block; ++c)
              kt(dd, c) = c < cols ? to_float(k_cache(b, kvh, j0 + c, dd)) : 0.0f;
          });
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, cols * dim_blocks), [&](const int x) {
            const int c = x / dim_blocks, d0 = (x % dim_blocks) * attention_block;
            for (int dd = d0; dd < d0 + attention_block; ++dd)
              vs(c, dd) = dd < hd ? to_float(v_cache(b, kvh, j0 + c, dd)) : 0.0f;
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * col_blocks), [&](const int x) {
            const int r = x / col_blocks, c0 = (x % col_blocks) * attention_block;
            scores_of_block(&qs(r, 0), &kt(0, c0), tile_pad, hd, &s(r, c0));
            for (int c = c0; c < c0 + attention_block; ++c)
              if (c >= cols || j0 + c > pos0 + i0 + r) s(r, c) = masked;
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows), [&](const int r) {
            float* const p = &s(r, 0);
            float mx = m(r);
            for (int c = 0; c < cols; ++c) mx = p[c] > mx ? p[c] : mx;
            // The exponentials apart from their sum: a loop the compiler can vectorise.
            for (int c = 0; c < cols; ++c) p[c] = exp_f(p[c] - mx);
            float sum = 0.0f;
            for (int c = 0; c < cols; ++c) sum += p[c];
            a(r) = exp_f(m(r) - mx);
            l(r) = a(r) * l(r) + sum;
            m(r) = mx;
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, rows * dim_blocks), [&](const int x) {
            const int r = x / dim_blocks, d0 = (x % dim_blocks) * attention_block;
            float acc[attention_block];
            for (int k = 0; k < attention_block; ++k) acc[k] = a(r) * os(r, d0 + k);
            for (int c = 0; c < cols; ++c) {
              const float p = s(r, c);
              for (int k = 0; k < attention_block; ++k) acc[k] += p * vs(c, d0 + k);
            }
            for (int k = 0; k < attention_block; ++k) os(r, d0 + k) = acc[k];
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
