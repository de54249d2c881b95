#include "moeproxy/core/kernels.hpp"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attention_blocks.hpp"
#include "rows_kernel.hpp"

namespace moeproxy {

namespace {
using Team = Kokkos::TeamPolicy<ExecSpace>::member_type;
using ScratchVector = Kokkos::View<float*, ExecSpace::scratch_memory_space, Kokkos::MemoryUnmanaged>;
}  // namespace

void normalize(const ExecSpace& space, NormKind kind, double eps, const ConstMatrix& x,
               const NormWeights& w, const Matrix& y) {
  const int d = static_cast<int>(x.extent(1));
  const float epsf = static_cast<float>(eps);
  const bool layernorm = kind == NormKind::layernorm;
  const ConstVector gain = w.gain;
  const ConstVector bias = w.bias;
  Kokkos::parallel_for(
      "moeproxy::kernels::normalize",
      Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(x.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team& team) {
        const int r = team.league_rank();
        float mean = 0.0f;
        if (layernorm) {
          Kokkos::parallel_reduce(
              Kokkos::TeamThreadRange(team, d), [&](const int j, float& s) { s += x(r, j); }, mean);
          mean /= d;
        }
        float sq = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, d),
            [&](const int j, float& s) {
              const float c = x(r, j) - mean;
              s += c * c;
            },
            sq);
        const float inv = 1.0f / sqrt_f(sq / d + epsf);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, d), [&](const int j) {
          const float v = (x(r, j) - mean) * inv * gain(j);
          y(r, j) = layernorm ? v + bias(j) : v;
        });
      });
}

RopeTable rope_table(const ExecSpace& space, int positions, int head_dim, double theta, int pair_begin,
                     int pairs) {
  const int count = pairs < 0 ? head_dim / 2 : pairs;
  RopeTable table(Kokkos::view_alloc("moeproxy::kernels::rope_table", Kokkos::WithoutInitializing), positions,
                  count);
  Kokkos::parallel_for(
      "moeproxy::kernels::rope_table",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {positions, count}),
      KOKKOS_LAMBDA(const int pos, const int p) {
        const double inv_freq = pow_d(theta, -2.0 * (pair_begin + p) / head_dim);
        sincos_d(pos * inv_freq, &table(pos, p, 1), &table(pos, p, 0));
      });
  return table;
}

void apply_rope(const ExecSpace& space, const Matrix& x, const RopeTable& table, int heads, int n, int pos0) {
  const int half = static_cast<int>(table.extent(1)), width = 2 * half;
  for_each_in_rows(
      space, "moeproxy::kernels::rope", static_cast<int>(x.extent(0)), half, KOKKOS_LAMBDA(const int r, const int p) {
        const int pos = pos0 + r % n;
        const double c = table(pos, p, 0), s = table(pos, p, 1);
        for (int h = 0; h < heads; ++h) {
          const int j = h * width + p;
          const float x1 = x(r, j);
          const float x2 = x(r, j + half);
          x(r, j) = static_cast<float>(x1 * c - x2 * s);
          x(r, j + half) = static_cast<float>(x2 * c + x1 * s);
        }
      });
}

template <class T>
void store_kv(const ExecSpace& space, const ConstMatrix& k, const ConstMatrix& v,
              const CacheOf<T>& k_cache, const CacheOf<T>& v_cache, int n, int pos0) {
  const int heads = static_cast<int>(k_cache.extent(1)), hd = static_cast<int>(k_cache.extent(3));
  // On a CPU a launch row per (token, head), whose dimensions are adjacent in k, v and the
  // cache, so that the divisions are per row: with a row per token and a division per
  // element, the medium deck's prefill spent 1.37 ms in store_kv on a core, now 0.72 ms
  // (2026-12-06). On a GPU a row per token: its heads x hd columns keep a team's threads busy.
  const int split = kernels_on_host ? heads : 1, cols = heads * hd / split;
  for_each_in_rows(
      space, "moeproxy::kernels::store_kv", static_cast<int>(k.extent(0)) * split, cols,
      KOKKOS_LAMBDA(const int row, const int c) {
        const int r = row / split, j = row % split * cols + c, b = r / n, pos = pos0 + r % n;
        const int h = kernels_on_host ? row % split : j / hd, dd = kernels_on_host ? c : j % hd;
        store_as(k_cache(b, h, pos, dd), k(r, j));
        store_as(v_cache(b, h, pos, dd), v(r, j));
      });
}

namespace {

// The end of one (query, head) team's attention: turns the scaled scores s[0, ctx), written
// by the team, into softmax weights (max subtracted first) and writes
// out(row, col0 + dd) = sum_j w_j v(b, kvh, j, dd) for every dimension dd of the cache.
template <class T>
KOKKOS_INLINE_FUNCTION void softmax_times_v(const Team& team, const ScratchVector& s, int ctx,
                                            const CacheOf<T>& v_cache, int b, int kvh, const Matrix& out,
                                            int row, int col0) {
  team.team_barrier();
  float mx = 0.0f;
  Kokkos::parallel_reduce(
      Kokkos::TeamThreadRange(team, ctx), [&](const int j, float& m) { m = s(j) > m ? s(j) : m; },
      Kokkos::Max<float>(mx));
  // The exponentials apart from their sum: a loop the compiler can vectorise on a CPU.
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, ctx), [&](const int j) { s(j) = exp_f(s(j) - mx); });
  float sum = 0.0f;
  Kokkos::parallel_reduce(Kokkos::TeamThreadRange(team, ctx), [&](const int j, float& acc) { acc += s(j); }, sum);
  team.team_barrier();
  const float inv = 1.0f / sum;
  const int hd = static_cast<int>(v_cache.extent(3));
  Kokkos::parallel_for(Kokkos::TeamThreadRange(team, blocks_of(hd)), [&](const int block) {
    const int d0 = block * attention_block;
    over_block(hd - d0 < attention_block ? hd - d0 : attention_block, [&](const auto width) {
      const T* const v = &v_cache(b, kvh, 0, d0);  // rows of hd values
      float acc[attention_block] = {};
      for (int j = 0; j < ctx; ++j) {
        const float w = s(j);
        for (int k = 0; k < width; ++k) acc[k] += w * to_float(v[j * hd + k]);
      }
      float* const o = &out(row, col0 + d0);
      for (int k = 0; k < width; ++k) o[k] = acc[k] * inv;
    });
  });
}

// acc[k] = q(row, col0 + .) . K(b, kvh, j0 + k, .) over the cache's dimensions, for k < width.
template <class T, class Width>
KOKKOS_INLINE_FUNCTION void dot_keys(const ConstMatrix& q, int row, int col0, const CacheOf<T>& k_cache, int b,
                                     int kvh, int j0, Width width, float (&acc)[attention_block]) {
  const int hd = static_cast<int>(k_cache.extent(3));
  const float* const qr = &q(row, col0);
  const T* const keys = &k_cache(b, kvh, j0, 0);  // rows of hd values
  for (int k = 0; k < width; ++k) acc[k] = 0.0f;
  for (int dd = 0; dd < hd; ++dd)
    for (int k = 0; k < width; ++k) acc[k] += qr[dd] * to_float(keys[k * hd + dd]);
}

}  // namespace

template <class T>
void attention(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
               const CacheOf<T>& v_cache, const Matrix& out, int n, int pos0, float scale,
               int head_begin, int group) {
  if (n > 1) {
    attention_tiled<T>(space, q, k_cache, v_cache, out, n, pos0, scale, head_begin, group);
    return;
  }
  const int batch = static_cast<int>(q.extent(0)) / n;
  const int hd = static_cast<int>(k_cache.extent(3));
  const int heads = static_cast<int>(q.extent(1)) / hd;
  const int kv_begin = head_begin / group;
  const int ctx_max = pos0 + n;
  Kokkos::TeamPolicy<ExecSpace> policy(space, batch * heads * n, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(ScratchVector::shmem_size(ctx_max)));
  Kokkos::parallel_for(
      "moeproxy::kernels::attention_decode", policy, KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        const int i = t % n, h = (t / n) % heads, b = t / (n * heads);
        const int row = b * n + i, kvh = (head_begin + h) / group - kv_begin, ctx = pos0 + i + 1;
        ScratchVector s(team.team_scratch(0), ctx_max);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, blocks_of(ctx)), [&](const int block) {
          const int j0 = block * attention_block;
          over_block(ctx - j0 < attention_block ? ctx - j0 : attention_block, [&](const auto width) {
            float acc[attention_block];
            dot_keys(q, row, h * hd, k_cache, b, kvh, j0, width, acc);
            for (int k = 0; k < width; ++k) s(j0 + k) = acc[k] * scale;
          });
        });
        softmax_times_v(team, s, ctx, v_cache, b, kvh, out, row, h * hd);
      });
}

template <class T>
void attention_scores(const ExecSpace& space, const ConstMatrix& q, const CacheOf<T>& k_cache,
                      const Scores& scores, int n, int pos0, int head_begin, int group) {
  const int batch = static_cast<int>(q.extent(0)) / n;
  const int hd = static_cast<int>(k_cache.extent(3));
  const int heads = static_cast<int>(q.extent(1)) / hd;
  const int kv_begin = head_begin / group;
  const int ctx_max = static_cast<int>(scores.extent(2));
  Kokkos::parallel_for(
      "moeproxy::kernels::attention_scores",
      Kokkos::TeamPolicy<ExecSpace>(space, batch * heads * n, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        const int i = t % n, h = (t / n) % heads, b = t / (n * heads);
        const int row = b * n + i, kvh = (head_begin + h) / group - kv_begin, ctx = pos0 + i + 1;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, blocks_of(ctx_max)), [&](const int block) {
          const int j0 = block * attention_block;
          const int end = ctx_max - j0 < attention_block ? ctx_max : j0 + attention_block;
          const int live = ctx < end ? ctx - j0 : end - j0;
          if (live > 0)
            over_block(live, [&](const auto width) {
              float acc[attention_block];
              dot_keys(q, row, h * hd, k_cache, b, kvh, j0, width, acc);
              for (int k = 0; k < width; ++k) scores(row, h, j0 + k) = acc[k];
            });
          for (int j = live > 0 ? j0 + live : j0; j < end; ++j) scores(row, h, j) = 0.0f;
        });
      });
}

template <class T>
void attention_apply(const ExecSpace& space, const Scores& scores, const CacheOf<T>& v_cache,
                     const Matrix& out, int n, int pos0, float scale, int head_begin, int group) {
  const int batch = static_cast<int>(scores.extent(0)) / n;
  const int heads = static_cast<int>(scores.extent(1));
  const int hd = static_cast<int>(v_cache.extent(3));
  const int kv_begin = head_begin / group;
  const int ctx_max = pos0 + n;
  Kokkos::TeamPolicy<ExecSpace> policy(space, batch * heads * n, Kokkos::AUTO);
  policy.set_scratch_size(0, Kokkos::PerTeam(ScratchVector::shmem_size(ctx_max)));
  Kokkos::parallel_for(
      "moeproxy::kernels::attention_apply", policy, KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        const int i = t % n, h = (t / n) % heads, b = t / (n * heads);
        const int row = b * n + i, kvh = (head_begin + h) / group - kv_begin, ctx = pos0 + i + 1;
        ScratchVector s(team.team_scratch(0), ctx_max);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, ctx),
                             [&](const int j) { s(j) = scale * scores(row, h, j); });
        softmax_times_v(team, s, ctx, v_cache, b, kvh, out, row, h * hd);
      });
}

#define MOEPROXY_CACHE_KERNELS(T)                                                                    \
  template void store_kv<T>(const ExecSpace&, const ConstMatrix&, const ConstMatrix&, const CacheOf<T>&,      \
                            const CacheOf<T>&, int, int);                                                    \
  template void attention<T>(const ExecSpace&, const ConstMatrix&, const CacheOf<T>&, const CacheOf<T>&,      \
                             const Matrix&, int, int, float, int, int);                                      \
  template void attention_scores<T>(const ExecSpace&, const ConstMatrix&, const CacheOf<T>&, const Scores&,   \
                                    int, int, int, int);                                                     \
  template void attention_apply<T>(const ExecSpace&, const Scores&, const CacheOf<T>&, const Matrix&, int,    \
                                   int, float, int, int);
MOEPROXY_CACHE_KERNELS(float)
MOEPROXY_CACHE_KERNELS(Half)
#undef MOEPROXY_CACHE_KERNELS

void activate(const ExecSpace& space, Activation act, const Matrix& x, const ConstMatrix& gate) {
  // Each activation its own loop, both free of library calls: one loop over both with tanh
  // for GELU stayed scalar on a CPU (SwiGLU took 9.2 ms of the medium deck's 63 ms prefill
  // on a core, 2026-12-06).
  const int rows = static_cast<int>(x.extent(0)), cols = static_cast<int>(x.extent(1));
  if (act == Activation::swiglu) {
    for_each_in_rows(space, "moeproxy::kernels::activate", rows, cols, KOKKOS_LAMBDA(const int r, const int j) {
      const float v = x(r, j);
      x(r, j) = v / (1.0f + exp_f(-v)) * gate(r, j);
    });
  } else {
    // GELU's 0.5 v (1 + tanh(u)) as v / (1 + e^(-2u)), the same function.
    for_each_in_rows(space, "moeproxy::kernels::activate", rows, cols, KOKKOS_LAMBDA(const int r, const int j) {
      const float v = x(r, j);
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);  // sqrt(2 / pi) (...)
      x(r, j) = v / (1.0f + exp_f(-2.0f * u));
    });
  }
}

void route_top_k(const ExecSpace& space, const ConstMatrix& logits, int top_k, bool renormalize,
                 const IndexMatrix& idx, const Matrix& weight) {
  const int experts = static_cast<int>(logits.extent(1));
  Kokkos::parallel_for(
      "moeproxy::kernels::route_top_k",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(logits.extent(0))),
      KOKKOS_LAMBDA(const int t) {
        float mx = logits(t, 0);
        for (int e = 1; e < experts; ++e) mx = logits(t, e) > mx ? logits(t, e) : mx;
        float sum = 0.0f;
        for (int e = 0; e < experts; ++e) sum += exp_f(logits(t, e) - mx);
        float picked = 0.0f;
        for (int j = 0; j < top_k; ++j) {
          int best = -1;
          for (int e = 0; e < experts; ++e) {
            bool taken = false;
            for (int i = 0; i < j; ++i) taken = taken || idx(t, i) == e;
            if (!taken && (best < 0 || logits(t, e) > logits(t, best))) best = e;
          }
          idx(t, j) = best;
          weight(t, j) = exp_f(logits(t, best) - mx) / sum;
          picked += weight(t, j);
        }
        if (renormalize)
          for (int j = 0; j < top_k; ++j) weight(t, j) /= picked;
      });
}

RoutingCdf routing_cdf(const ExecSpace& space, int experts, double zipf_exponent) {
  // Cumulative distribution over experts: P(e) ~ (e + 1)^-s; s = 0 is uniform.
  Kokkos::View<double*, MemSpace> cdf("moeproxy::kernels::routing_cdf", experts);
  auto h_cdf = Kokkos::create_mirror_view(cdf);
  double total = 0.0;
  for (int e = 0; e < experts; ++e) total += std::pow(e + 1.0, -zipf_exponent);
  double acc = 0.0;
  for (int e = 0; e < experts; ++e) h_cdf(e) = (acc += std::pow(e + 1.0, -zipf_exponent) / total);
  Kokkos::deep_copy(space, cdf, h_cdf);
  named_fence(space, "moeproxy::kernels::routing_cdf");  // h_cdf goes out of scope
  return cdf;
}

void route_synthetic(const ExecSpace& space, std::uint64_t seed, int layer, std::int64_t token0,
                     const RoutingCdf& d_cdf, const IndexMatrix& idx, const Matrix& weight) {
  const int experts = static_cast<int>(d_cdf.extent(0));
  const std::uint64_t stream = tensor_stream(seed, TensorKind::synthetic_routing, layer, 0);
  const int top_k = static_cast<int>(idx.extent(1));
  constexpr int max_draws = 64;
  Kokkos::parallel_for(
      "moeproxy::kernels::route_synthetic",
      Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(idx.extent(0))),
      KOKKOS_LAMBDA(const int t) {
        const std::uint64_t token = static_cast<std::uint64_t>(token0 + t);
        for (int j = 0; j < top_k; ++j) {
          int chosen = -1;
          for (int a = 0; a < max_draws && chosen < 0; ++a) {
            const double u = 0.5 * (uniform_at(stream, token, static_cast<std::uint64_t>(j * max_draws + a)) + 1.0);
            int e = 0;
            while (e < experts - 1 && d_cdf(e) <= u) ++e;
            bool taken = false;
            for (int i = 0; i < j; ++i) taken = taken || idx(t, i) == e;
            if (!taken) chosen = e;
          }
          // Rare with k << E; keeps the result deterministic and the k experts distinct.
          for (int e = 0; chosen < 0 && e < experts; ++e) {
            bool taken = false;
            for (int i = 0; i < j; ++i) taken = taken || idx(t, i) == e;
            if (!taken) chosen = e;
          }
          idx(t, j) = chosen;
          weight(t, j) = 1.0f / top_k;
        }
      });
}

void relabel_experts(const ExecSpace& space, const IndexMatrix& idx, const ConstIndexVector& position) {
  const int top_k = static_cast<int>(idx.extent(1));
  Kokkos::parallel_for(
      "moeproxy::router::relabel", Kokkos::RangePolicy<ExecSpace>(space, 0, static_cast<int>(idx.extent(0))),
      KOKKOS_LAMBDA(const int t) {
        for (int j = 0; j < top_k; ++j) idx(t, j) = position(idx(t, j));
      });
}

std::int64_t permute(const ExecSpace& space, const IndexMatrix& idx, int experts, int capacity,
                     Permutation& perm) {
  const int top_k = static_cast<int>(idx.extent(1));
  const int slots = static_cast<int>(idx.extent(0)) * top_k;
  const auto head = [](const IndexVector& v, int n) { return Kokkos::subview(v, std::make_pair(0, n)); };
  reserve_elements(perm.rank_store, slots, "moeproxy::permute::rank");
  reserve_elements(perm.position_store, slots, "moeproxy::permute::position");
  reserve_elements(perm.source_store, slots, "moeproxy::permute::source");
  if (static_cast<int>(perm.counts.extent(0)) != experts) {
    perm.counts = IndexVector("moeproxy::permute::counts", experts);
    perm.offsets = IndexVector("moeproxy::permute::offsets", experts + 1);
    perm.host_counts = Kokkos::create_mirror_view(StagingSpace(), perm.counts);
    perm.host_offsets = Kokkos::create_mirror_view(StagingSpace(), perm.offsets);
  }
  if (!idx.span_is_contiguous()) throw std::invalid_argument("permute: the expert indices must be contiguous rows");
  // Slot s = t * top_k + j is idx's s-th element: the scan reads them without a division each.
  const Kokkos::View<const int*, MemSpace, Kokkos::MemoryUnmanaged> expert_of(idx.data(), slots);
  const IndexVector rank = perm.rank_store, counts = perm.counts;
  perm.position = head(perm.position_store, slots);
  // One team per expert scans the slots: each slot's rank among the slots of its expert, in
  // slot order (deterministic, unlike atomics), and the expert's count. One kernel and one
  // copy to the host, where a scan per expert cost a launch and a synchronisation each.
  if (slots == 0) {
    named_fence(space, "moeproxy::permute::no_slots");  // the last call's copies out of host_counts are done
    Kokkos::deep_copy(perm.host_counts, 0);
  } else {
    Kokkos::parallel_for(
        "moeproxy::permute::rank", Kokkos::TeamPolicy<ExecSpace>(space, experts, Kokkos::AUTO),
        KOKKOS_LAMBDA(const Team& team) {
          const int e = team.league_rank();
          Kokkos::parallel_scan(Kokkos::TeamThreadRange(team, slots), [&](const int s, int& upd, const bool final) {
            const bool mine = expert_of(s) == e;
            if (final && mine) rank(s) = upd;
            if (mine) upd += 1;
            if (final && s == slots - 1) counts(e) = upd;
          });
        });
    Kokkos::deep_copy(space, perm.host_counts, counts);
    named_fence(space, "moeproxy::permute::counts");
  }
  const auto h_counts = perm.host_counts;
  const auto h_offsets = perm.host_offsets;
  std::int64_t dropped = 0;
  h_offsets(0) = 0;
  for (int e = 0; e < experts; ++e) {
    const int kept = capacity < 0 ? h_counts(e) : std::min(h_counts(e), capacity);
    dropped += h_counts(e) - kept;
    h_counts(e) = kept;
    h_offsets(e + 1) = h_offsets(e) + kept;
  }
  Kokkos::deep_copy(space, counts, h_counts);
  Kokkos::deep_copy(space, perm.offsets, h_offsets);
  perm.source = head(perm.source_store, h_offsets(experts));
  const IndexVector position = perm.position, source = perm.source, offsets = perm.offsets;
  Kokkos::parallel_for(
      "moeproxy::permute::scatter", Kokkos::RangePolicy<ExecSpace>(space, 0, slots),
      KOKKOS_LAMBDA(const int s) {
        const int e = expert_of(s);
        const int r = rank(s);
        if (r < counts(e)) {
          position(s) = offsets(e) + r;
          source(offsets(e) + r) = s / top_k;
        } else {
          position(s) = -1;
        }
      });
  return dropped;
}

void gather_rows(const ExecSpace& space, const ConstMatrix& x, const IndexVector& source,
                 const Matrix& out) {
  for_each_in_rows(
      space, "moeproxy::kernels::gather_rows", static_cast<int>(out.extent(0)), static_cast<int>(out.extent(1)),
      KOKKOS_LAMBDA(const int r, const int j) { out(r, j) = x(source(r), j); });
}

// A team per row, one vector loop over the columns per kept slot. With the loop over the
// slots inside each element (acc += w * y(p, j), then x += acc) the compiler vectorised
// nothing: on one core of the AMD VM (2026-12-07) [1024, 256] rows of top-2 took 555 us,
// 70 us so, 5.5 and 1.9 us for 8 rows. Onto a zeroed x, as the callers have it, the sums
// are the same, slot by slot.
void combine(const ExecSpace& space, const ConstMatrix& y, const IndexVector& position,
             const ConstMatrix& weight, const Matrix& x) {
  const int top_k = static_cast<int>(weight.extent(1)), rows = static_cast<int>(x.extent(0));
  const int cols = static_cast<int>(x.extent(1));
  if (rows == 0 || cols == 0) return;
  Kokkos::parallel_for(
      "moeproxy::kernels::combine", Kokkos::TeamPolicy<ExecSpace>(space, rows, Kokkos::AUTO),
      KOKKOS_LAMBDA(const Team& team) {
        const int t = team.league_rank();
        for (int s = 0; s < top_k; ++s) {
          const int p = position(t * top_k + s);
          if (p < 0) continue;
          const float w = weight(t, s);
          Kokkos::parallel_for(Kokkos::TeamVectorRange(team, cols), [&](const int j) { x(t, j) += w * y(p, j); });
        }
      });
}

void add_into(const ExecSpace& space, const ConstMatrix& y, const Matrix& x) {
  for_each_in_rows(
      space, "moeproxy::kernels::add_into", static_cast<int>(x.extent(0)), static_cast<int>(x.extent(1)),
      KOKKOS_LAMBDA(const int t, const int j) { x(t, j) += y(t, j); });
}

namespace {

// The int8 code of x under scale s, as its two's-complement byte.
KOKKOS_INLINE_FUNCTION unsigned char int8_code(float x, float s) {
  if (s == 0.0f) return 0;
  float q = x / s;
  q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
  const float r = q >= 0.0f ? floor_f(q + 0.5f) : -floor_f(0.5f - q);
  return static_cast<unsigned char>(static_cast<int>(r));
}

}  // namespace

int int8_row_words(int d) { return 1 + (d + 3) / 4; }

void quantize_int8_rows(const ExecSpace& space, const ConstMatrix& x, const Matrix& packed) {
  const int d = static_cast<int>(x.extent(1)), words = int8_row_words(d) - 1;
  using Policy = Kokkos::TeamPolicy<ExecSpace>;
  Kokkos::parallel_for(
      "moeproxy::kernels::quantize_int8_rows", Policy(space, static_cast<int>(x.extent(0)), Kokkos::AUTO),
      KOKKOS_LAMBDA(const Policy::member_type& team) {
        const int t = team.league_rank();
        float peak = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, d),
            [&](const int j, float& m) {
              const float a = x(t, j) < 0.0f ? -x(t, j) : x(t, j);
              if (a > m) m = a;
            },
            Kokkos::Max<float>(peak));
        const float s = peak / 127.0f;
        Kokkos::single(Kokkos::PerTeam(team), [&] { packed(t, 0) = s; });
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, words), [&](const int w) {
          unsigned char bytes[4] = {0, 0, 0, 0};
          for (int i = 0; i < 4 && 4 * w + i < d; ++i) bytes[i] = int8_code(x(t, 4 * w + i), s);
          float word;
          memcpy(&word, bytes, sizeof word);
          packed(t, 1 + w) = word;
        });
      });
}

void dequantize_int8_rows(const ExecSpace& space, const ConstMatrix& packed, const Matrix& x) {
  for_each_in_rows(
      space, "moeproxy::kernels::dequantize_int8_rows", static_cast<int>(x.extent(0)), static_cast<int>(x.extent(1)),
      KOKKOS_LAMBDA(const int t, const int j) {
        const float word = packed(t, 1 + j / 4);
        unsigned char bytes[4];
        memcpy(bytes, &word, sizeof bytes);
        const int q = bytes[j % 4] > 127 ? bytes[j % 4] - 256 : bytes[j % 4];
        x(t, j) = static_cast<float>(q) * packed(t, 0);
      });
}

}  // namespace moeproxy
