#pragma once
// The transformer's kernels. Each takes the execution-space instance it runs on first and
// enqueues its work there without fencing: callers fence where they time or communicate.
//
// Notation (shapes in comments below):
//   T  tokens in this call (rows), T = B * n with n = prompt (prefill) or 1 (decode)
//   d  hidden, H query heads, Hkv kv heads, hd head_dim, f ffn_hidden, E experts, k top_k

#include "moeproxy/core/attention_tile.hpp"
#include "moeproxy/core/config.hpp"
#include "moeproxy/core/gemm.hpp"
#include "moeproxy/core/types.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy {

// y = norm(x) * gain (+ bias): RMSNorm or LayerNorm over each row. [T,d] -> [T,d].
void normalize(const ExecSpace& space, NormKind kind, double eps, const ConstMatrix& x,
               const NormWeights& w, const Matrix& y);

// The rotary embedding's cos and sin of the angle pos * theta^(-2p / head_dim), for
// positions [0, positions) and pairs p in [pair_begin, pair_begin + pairs) (pairs < 0: all
// head_dim / 2 of them), as [positions, pairs, {cos, sin}] in double. Computed once per
// model: a pow and a sincos per angle cost 5% of a prefill on a CPU core when recomputed for
// every row (2026-12-06).
using RopeTable = Kokkos::View<double** [2], Kokkos::LayoutRight, MemSpace>;
RopeTable rope_table(const ExecSpace& space, int positions, int head_dim, double theta, int pair_begin = 0,
                     int pairs = -1);

// Rotary embedding in place on rows of x viewed as [T, heads, 2 * pairs], pairs the table's:
// the token of row r = b * n + i sits at position pos0 + i, and each head's dimension p
// turns with p + pairs (LLaMA's rotate-half form) by the table's angle of (pos0 + i, p).
// A table of a slice of pairs (AxisMap's head slice) rotates heads that hold only those.
void apply_rope(const ExecSpace& space, const Matrix& x, const RopeTable& table, int heads, int n, int pos0);

// The attention kernels below take a KV cache of T = float or Half (binary16 storage, read
// back as float: scores, softmax and the weighted sum of V stay fp32).

// Writes k, v rows [B*n, Hkv*hd] into cache positions [pos0, pos0 + n) of each sequence
// (rounded to nearest even when the cache is binary16).
template <class T>
void store_kv(const ExecSpace& space, const ConstMatrix& k, const ConstMatrix& v,
              const CacheOf<T>& k_cache, const CacheOf<T>& v_cache, int n, int pos0);

// Causal attention of n queries per sequence at positions [pos0, pos0 + n) against cache
// positions [0, pos0 + n). q, out: [B*n, H_local*hd], local head h being global head
// head_begin + h, which reads global kv head (head_begin + h) / group; the cache holds the
// shard's kv heads from global kv head head_begin / group on. Several queries per sequence
// (prefill) go through attention_tiled; one (decode) through a kernel that spreads the
// context over a team per (sequence, head).
template <class T>
void attention(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
               const CacheOf<T>& v_cache, const Matrix& out, int n, int pos0, float scale,
               int head_begin, int group);
// The same attention over tiles of attention_tile(head_dim) queries and keys staged in
// team scratch, with an online softmax (flash_attention.cpp): K and V are read once per
// query tile rather than once per query.
template <class T>
void attention_tiled(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
                     const CacheOf<T>& v_cache, const Matrix& out, int n, int pos0, float scale,
                     int head_begin, int group);

// Attention split around a reduction, for ranks holding a slice of each head's dimensions
// (intra-head slicing): the slices' partial scores are summed over the ranks before the
// softmax. q, k_cache, v_cache and out hold the same slice of every head; heads as above.
// scores(r, h, j) = q_h(r) . k_h(j) over the slice (unscaled) for the query's causal window
// j < pos0 + i + 1, and 0 beyond it, so that summing whole buffers stays finite.
// scores [B*n, H_local, pos0 + n].
template <class T>
void attention_scores(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
                      const Scores& scores, int n, int pos0, int head_begin, int group);
// out_h(r) = sum_j softmax_j(scale * scores(r, h, j)) v_h(j) over the causal window: the
// slice of the attention output whose dimensions v_cache holds. out [B*n, H_local*w].
template <class T>
void attention_apply(const ExecSpace& space, const Scores& scores, const CacheOf<T>& v_cache,
                     const Matrix& out, int n, int pos0, float scale, int head_begin, int group);

// x = act(x) (GELU) or x = silu(x) * gate (SwiGLU), elementwise on [T, f].
void activate(const ExecSpace& space, Activation act, const Matrix& x, const ConstMatrix& gate);

// Router: probabilities = softmax(logits) over E, then the k largest (ties: lower expert
// index), optionally renormalised to sum to one. logits [T,E] in, idx/weight [T,k] out.
void route_top_k(const ExecSpace& space, const ConstMatrix& logits, int top_k, bool renormalize,
                 const IndexMatrix& idx, const Matrix& weight);

// Synthetic routing (workload.routing): expert choices drawn from the counter-based hash
// per global token, uniform or Zipf(s), k distinct experts, weights 1/k. `cdf` is
// routing_cdf's, made once per run: a view made per call is an allocation, a copy and a
// free (a device synchronisation on a GPU) per layer and pass.
using RoutingCdf = Kokkos::View<const double*, MemSpace>;
RoutingCdf routing_cdf(const ExecSpace& space, int experts, double zipf_exponent);
void route_synthetic(const ExecSpace& space, std::uint64_t seed, int layer, std::int64_t token0,
                     const RoutingCdf& cdf, const IndexMatrix& idx, const Matrix& weight);

// idx(t, j) = position(idx(t, j)): expert ids to their positions in an expert placement's
// order (placement.hpp), so that each rank's experts permute into one block of rows.
void relabel_experts(const ExecSpace& space, const IndexMatrix& idx, const ConstIndexVector& position);

// Deterministic permutation of the T*k (token, slot) pairs by expert: slot s = t*k + j goes
// to position offsets[e] + (number of earlier slots with the same expert e), so the order
// never depends on thread timing. Slots past `capacity` tokens of their expert are dropped
// (position -1). counts[e] = kept tokens of expert e, offsets = exclusive scan of counts.
// capacity < 0 = dropless. Returns the number of dropped slots.
// A Permutation keeps its storage between calls (a pass permutes every layer at the same
// sizes): on a GPU each fresh view is a cudaMalloc, and each freed one a device synchronisation.
struct Permutation {
  IndexVector position;            // [T*k]
  IndexVector counts;              // [E]
  IndexVector offsets;             // [E + 1]
  IndexVector source;              // [kept] token row of each permuted row
  StagingIndexVector host_counts;  // [E] counts, on the host

  IndexVector rank_store, position_store, source_store;  // position and source are heads of these
  StagingIndexVector host_offsets;
};
std::int64_t permute(const ExecSpace& space, const IndexMatrix& idx, int experts, int capacity,
                     Permutation& perm);

// out[r] = x[source[r]] for the permuted rows. [kept, d].
void gather_rows(const ExecSpace& space, const ConstMatrix& x, const IndexVector& source,
                 const Matrix& out);

// x[t] += weight[t,j] * y[position[t*k + j]] for each kept slot, j ascending. [T,d].
void combine(const ExecSpace& space, const ConstMatrix& y, const IndexVector& position,
             const ConstMatrix& weight, const Matrix& x);

// x += y, elementwise on [T, d].
void add_into(const ExecSpace& space, const ConstMatrix& y, const Matrix& x);

// Rows quantised to int8 for transfer (parallel/compression.hpp), symmetric with one scale per
// row: row t of x [T, d] becomes row t of packed [T, int8_row_words(d)] holding in word 0 the
// fp32 scale s = max_j |x(t, j)| / 127 and then q_j = round(x(t, j) / s) (to nearest, halves
// away from zero; in [-127, 127]) one byte each, four to a 32-bit word in memory order, the
// last word padded with zeros. A zero row has s = 0 and q = 0. Dequantised, x(t, j) = q_j * s
// is within s / 2 of the original. The words are stored in a float buffer so that the
// transports move them unchanged; they are bytes, not numbers. Finite inputs only.
int int8_row_words(int d);
void quantize_int8_rows(const ExecSpace& space, const ConstMatrix& x, const Matrix& packed);
void dequantize_int8_rows(const ExecSpace& space, const ConstMatrix& packed, const Matrix& x);

}  // namespace moeproxy
