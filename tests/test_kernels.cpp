// Every kernel against a naive host loop.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "moeproxy/core/kernels.hpp"
#include "test_helpers.hpp"

using namespace moeproxy;
using moeproxy::testing::random_matrix;
using moeproxy::testing::to_host;

namespace {
constexpr double tight = 1e-5;  // fp32 kernels vs double loops, relative to the data's scale

double rel_diff(double a, double b, double scale) { return std::abs(a - b) / std::max(scale, 1e-30); }
}  // namespace

TEST_CASE("gemm: A*B, A*B^T and accumulation match a naive product", "[kernels]") {
  ExecSpace space;
  const int m = 7, k = 13, n = 5;
  const Matrix a = random_matrix("a", m, k, 1), b = random_matrix("b", k, n, 2), bt = random_matrix("bt", n, k, 3);
  Matrix c("c", m, n), c2 = random_matrix("c2", m, n, 4);
  auto c2_before = moeproxy::testing::snapshot(c2);
  gemm(space, a, b, c);
  gemm(space, a, bt, c2, 0.5f, 1.0f, true);
  space.fence();
  auto ha = to_host(a), hb = to_host(b), hbt = to_host(bt), hc = to_host(c), hc2 = to_host(c2);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0.0, st = 0.0;
      for (int p = 0; p < k; ++p) {
        s += double(ha(i, p)) * hb(p, j);
        st += double(ha(i, p)) * hbt(j, p);
      }
      REQUIRE(rel_diff(hc(i, j), s, 4.0) < tight);
      REQUIRE(rel_diff(hc2(i, j), c2_before(i, j) + 0.5 * st, 4.0) < tight);
    }
}

TEST_CASE("normalize: RMSNorm and LayerNorm match the formulas", "[kernels]") {
  ExecSpace space;
  const int t = 5, d = 33;
  const Matrix x = random_matrix("x", t, d, 5, 3.0f);
  NormWeights w{Vector("g", d), Vector("b", d)};
  auto hg = Kokkos::create_mirror_view(w.gain);
  auto hb = Kokkos::create_mirror_view(w.bias);
  for (int j = 0; j < d; ++j) {
    hg(j) = 1.0f + 0.01f * j;
    hb(j) = -0.02f * j;
  }
  Kokkos::deep_copy(w.gain, hg);
  Kokkos::deep_copy(w.bias, hb);
  auto hx = to_host(x);
  for (NormKind kind : {NormKind::rmsnorm, NormKind::layernorm}) {
    Matrix y("y", t, d);
    normalize(space, kind, 1e-5, x, w, y);
    auto hy = to_host(y);
    for (int r = 0; r < t; ++r) {
      double mean = 0.0, sq = 0.0;
      if (kind == NormKind::layernorm) {
        for (int j = 0; j < d; ++j) mean += hx(r, j);
        mean /= d;
      }
      for (int j = 0; j < d; ++j) sq += (hx(r, j) - mean) * (hx(r, j) - mean);
      const double inv = 1.0 / std::sqrt(sq / d + 1e-5);
      for (int j = 0; j < d; ++j) {
        double want = (hx(r, j) - mean) * inv * hg(j);
        if (kind == NormKind::layernorm) want += hb(j);
        REQUIRE(rel_diff(hy(r, j), want, 2.0) < tight);
      }
    }
  }
}

TEST_CASE("rope: rotate-half pairs by position times theta^(-2p/hd)", "[kernels]") {
  ExecSpace space;
  const int heads = 3, hd = 8, n = 4, pos0 = 6, batch = 2;
  Matrix x = random_matrix("x", batch * n, heads * hd, 6);
  auto before = moeproxy::testing::snapshot(x);
  apply_rope(space, x, rope_table(space, pos0 + n, hd, 10000.0), heads, n, pos0);
  auto after = to_host(x);
  for (int r = 0; r < batch * n; ++r)
    for (int h = 0; h < heads; ++h)
      for (int p = 0; p < hd / 2; ++p) {
        const double angle = (pos0 + r % n) * std::pow(10000.0, -2.0 * p / hd);
        const double x1 = before(r, h * hd + p), x2 = before(r, h * hd + p + hd / 2);
        REQUIRE(rel_diff(after(r, h * hd + p), x1 * std::cos(angle) - x2 * std::sin(angle), 1.0) < tight);
        REQUIRE(rel_diff(after(r, h * hd + p + hd / 2), x2 * std::cos(angle) + x1 * std::sin(angle), 1.0) < tight);
      }
}

namespace {
using HostCache = Kokkos::View<float****, Kokkos::LayoutRight, Kokkos::HostSpace>;

// Random queries [batch*n, heads*hd] at positions [pos0, pos0 + n) and a cache
// [batch, kv_heads, ctx + 2, hd] (two positions past the context, which must stay unread),
// with the naive attention of whole heads.
struct AttentionCase {
  int batch, heads, kv_heads, hd, n, pos0;
  HostMatrix q;
  HostCache k, v;

  // round_kv: keys and values are binary16 values (what an fp16 cache holds).
  AttentionCase(int batch_, int heads_, int kv_heads_, int hd_, int n_, int pos0_, bool round_kv = false)
      : batch(batch_), heads(heads_), kv_heads(kv_heads_), hd(hd_), n(n_), pos0(pos0_),
        q("q", batch * n, heads * hd), k("k", batch, kv_heads, ctx() + 2, hd), v("v", batch, kv_heads, ctx() + 2, hd) {
    const std::uint64_t s = tensor_stream(11, TensorKind::input, 0, 0);
    for (int b = 0; b < batch; ++b)
      for (int h = 0; h < kv_heads; ++h)
        for (int p = 0; p < ctx() + 2; ++p)
          for (int e = 0; e < hd; ++e) {
            k(b, h, p, e) = 2.0f * uniform_at(s, b * 1000 + h * 100 + p, e);
            v(b, h, p, e) = uniform_at(s, b * 1000 + h * 100 + p, 500 + e);
            if (round_kv) {
              k(b, h, p, e) = round_to_half(k(b, h, p, e));
              v(b, h, p, e) = round_to_half(v(b, h, p, e));
            }
          }
    const std::uint64_t sq = tensor_stream(12, TensorKind::input, 0, 0);
    for (int r = 0; r < batch * n; ++r)
      for (int j = 0; j < heads * hd; ++j) q(r, j) = 2.0f * uniform_at(sq, r, j);
  }
  int ctx() const { return pos0 + n; }
  int group() const { return heads / kv_heads; }
  float scale() const { return 1.0f / std::sqrt(float(hd)); }
  // q_h(r) . k_h(j) over head dimensions `dims` of query row r, head h.
  double dot(int r, int h, int j, const std::vector<int>& dims) const {
    double acc = 0.0;
    for (int e : dims) acc += double(q(r, h * hd + e)) * k(r / n, h / group(), j, e);
    return acc;
  }
  // The attention output of query row r, head h: [hd].
  std::vector<double> out(int r, int h) const {
    const int pos = pos0 + r % n, kvh = h / group();
    std::vector<int> all(hd);
    std::iota(all.begin(), all.end(), 0);
    std::vector<double> w(pos + 1), o(hd, 0.0);
    for (int j = 0; j <= pos; ++j) w[j] = dot(r, h, j, all) * scale();
    const double mx = *std::max_element(w.begin(), w.end());
    double sum = 0.0;
    for (double& x : w) sum += (x = std::exp(x - mx));
    for (int e = 0; e < hd; ++e) {
      for (int j = 0; j <= pos; ++j) o[e] += w[j] * v(r / n, kvh, j, e);
      o[e] /= sum;
    }
    return o;
  }
};

// With T = Half the cache is filled by store_kv from fp32 keys and values that are already
// binary16 values, so the stored bits and the naive result must match exactly and tightly.
// tiled: call attention_tiled directly (attention itself picks it only for n > 1).
template <class T = float>
void check_attention(int batch, int heads, int kv_heads, int hd, int n, int pos0, bool tiled = false) {
  ExecSpace space;
  const bool half = std::is_same<T, Half>::value;
  const AttentionCase c(batch, heads, kv_heads, hd, n, pos0, half);
  CacheOf<T> kc("k", batch, kv_heads, c.ctx() + 2, hd), vc("v", batch, kv_heads, c.ctx() + 2, hd);
  Matrix q("q", batch * n, heads * hd), out("out", batch * n, heads * hd);
  // Every cache position goes in through store_kv as rows [batch * positions, kv_heads * hd].
  const int positions = c.ctx() + 2;
  Matrix k_rows("k_rows", batch * positions, kv_heads * hd), v_rows("v_rows", batch * positions, kv_heads * hd);
  auto hk = Kokkos::create_mirror_view(k_rows);
  auto hv = Kokkos::create_mirror_view(v_rows);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < kv_heads; ++h)
      for (int p = 0; p < positions; ++p)
        for (int e = 0; e < hd; ++e) {
          hk(b * positions + p, h * hd + e) = c.k(b, h, p, e);
          hv(b * positions + p, h * hd + e) = c.v(b, h, p, e);
        }
  Kokkos::deep_copy(k_rows, hk);
  Kokkos::deep_copy(v_rows, hv);
  store_kv<T>(space, k_rows, v_rows, kc, vc, positions, 0);
  Kokkos::deep_copy(q, c.q);
  if (tiled)
    attention_tiled<T>(space, q, kc, vc, out, n, pos0, c.scale(), 0, c.group());
  else
    attention<T>(space, q, kc, vc, out, n, pos0, c.scale(), 0, c.group());
  auto ho = to_host(out);
  for (int r = 0; r < batch * n; ++r)
    for (int h = 0; h < heads; ++h) {
      const std::vector<double> want = c.out(r, h);
      for (int e = 0; e < hd; ++e) REQUIRE(rel_diff(ho(r, h * hd + e), want[e], 1.0) < tight);
    }
}

// Heads [head_begin, head_begin + head_count) split into `slices` slices of whole RoPE
// pairs: each slice's partial scores, summed over the slices before the softmax, then each
// slice's own V columns, must give those columns of the whole heads' attention.
void check_sliced_attention(const AttentionCase& c, int head_begin, int head_count, int slices) {
  ExecSpace space;
  const int pairs = c.hd / 2 / slices, w = 2 * pairs, rows = c.batch * c.n;
  const int kv_begin = head_begin / c.group(), kv_count = (head_begin + head_count - 1) / c.group() - kv_begin + 1;
  std::vector<std::vector<int>> dims(slices);
  for (int s = 0; s < slices; ++s)
    for (int j = 0; j < w; ++j) dims[s].push_back(static_cast<int>(AxisMap::head_slice(0, c.hd, s * pairs, pairs)(j)));
  std::vector<Matrix> q, out;
  std::vector<Cache> vc;
  std::vector<double> total(static_cast<std::size_t>(rows) * head_count * c.ctx(), 0.0);
  for (int s = 0; s < slices; ++s) {
    q.emplace_back("q", rows, head_count * w);
    out.emplace_back("out", rows, head_count * w);
    Cache kc("k", c.batch, kv_count, c.ctx() + 2, w);
    vc.emplace_back("v", c.batch, kv_count, c.ctx() + 2, w);
    auto hq = Kokkos::create_mirror_view(q[s]);
    auto hk = Kokkos::create_mirror_view(kc);
    auto hv = Kokkos::create_mirror_view(vc[s]);
    for (int j = 0; j < w; ++j) {
      for (int r = 0; r < rows; ++r)
        for (int h = 0; h < head_count; ++h) hq(r, h * w + j) = c.q(r, (head_begin + h) * c.hd + dims[s][j]);
      for (int b = 0; b < c.batch; ++b)
        for (int h = 0; h < kv_count; ++h)
          for (int p = 0; p < c.ctx() + 2; ++p) {
            hk(b, h, p, j) = c.k(b, kv_begin + h, p, dims[s][j]);
            hv(b, h, p, j) = c.v(b, kv_begin + h, p, dims[s][j]);
          }
    }
    Kokkos::deep_copy(q[s], hq);
    Kokkos::deep_copy(kc, hk);
    Kokkos::deep_copy(vc[s], hv);
    Scores scores("scores", rows, head_count, c.ctx());
    attention_scores(space, q[s], kc, scores, c.n, c.pos0, head_begin, c.group());
    auto hs = to_host(scores);
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < head_count; ++h)
        for (int j = 0; j < c.ctx(); ++j) {
          const bool visible = j <= c.pos0 + r % c.n;
          const double want = visible ? c.dot(r, head_begin + h, j, dims[s]) : 0.0;
          REQUIRE(rel_diff(hs(r, h, j), want, 4.0) < tight);
          total[(static_cast<std::size_t>(r) * head_count + h) * c.ctx() + j] += hs(r, h, j);
        }
  }
  Scores summed("summed", rows, head_count, c.ctx());
  auto hsum = Kokkos::create_mirror_view(summed);
  std::copy(total.begin(), total.end(), hsum.data());
  Kokkos::deep_copy(summed, hsum);
  for (int s = 0; s < slices; ++s) {
    attention_apply(space, summed, vc[s], out[s], c.n, c.pos0, c.scale(), head_begin, c.group());
    auto ho = to_host(out[s]);
    for (int r = 0; r < rows; ++r)
      for (int h = 0; h < head_count; ++h) {
        const std::vector<double> want = c.out(r, head_begin + h);
        for (int j = 0; j < w; ++j) REQUIRE(rel_diff(ho(r, h * w + j), want[dims[s][j]], 1.0) < tight);
      }
  }
}
}  // namespace

// The host's inline exponential (types.hpp) against double-precision exp: every softmax on
// a CPU goes through it.
TEST_CASE("exp_host: within 1 ulp of exp over [-87, 88], 0 below", "[kernels]") {
  double worst = 0.0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 200000.0f;
    const double exact = std::exp(static_cast<double>(x));
    const float near = static_cast<float>(exact);
    const double ulp = std::nextafter(near, INFINITY) - near;
    worst = std::max(worst, std::fabs(exp_host(x) - exact) / ulp);
  }
  CHECK(worst <= 1.0);
  CHECK(exp_host(0.0f) == 1.0f);
  CHECK(exp_host(-87.5f) == 0.0f);
  CHECK(exp_host(-3.0e38f) == 0.0f);
  CHECK(exp_host(-INFINITY) == 0.0f);
  CHECK(std::isfinite(exp_host(1000.0f)));
}

TEST_CASE("attention: causal prefill with grouped kv heads matches naive softmax", "[kernels]") {
  check_attention(3, 6, 2, 12, 9, 0);
}

TEST_CASE("attention: decode against a longer cache, masked beyond the query", "[kernels]") {
  check_attention(2, 4, 4, 16, 1, 17);
}

// The last block of keys and of a head's dimensions is seldom full: contexts of 1 to 9 keys
// over heads of 13 dimensions meet every width of a partial block on a CPU (attention_block 8).
TEST_CASE("attention: decode over contexts and heads that end in a partial block", "[kernels]") {
  for (int pos0 = 0; pos0 < 9; ++pos0) check_attention(2, 4, 2, 13, 1, pos0);
  check_attention(1, 2, 1, 5, 1, 30);
}

// Tiles of attention_tile(hd) queries and keys: several query tiles with a short last one,
// keys spanning tiles past the queries' own (pos0 > 0), and the 4-wide tiles of hd = 512.
TEST_CASE("attention: tiled prefill over several query and key tiles matches naive softmax", "[kernels]") {
  REQUIRE(attention_tile(64) == 32);
  check_attention(2, 4, 2, 64, 70, 0);
  check_attention(1, 2, 1, 128, 20, 13);
  check_attention(1, 2, 2, 512, 10, 3);
  check_attention<Half>(2, 4, 2, 64, 70, 0);
}

TEST_CASE("attention: the tiled kernel also answers one query per sequence", "[kernels]") {
  check_attention(2, 4, 4, 16, 1, 17, true);
  check_attention(2, 4, 2, 64, 1, 40, true);
}

TEST_CASE("attention: a binary16 KV cache stores and reads back the binary16 values", "[kernels]") {
  check_attention<Half>(3, 6, 2, 12, 9, 0);
  check_attention<Half>(2, 4, 4, 16, 1, 17);
}

TEST_CASE("store_kv: a binary16 cache rounds to nearest even", "[kernels]") {
  ExecSpace space;
  const Matrix k = random_matrix("k", 6, 8, 31, 3.0f), v = random_matrix("v", 6, 8, 32, 3.0f);
  HalfCache kc("kc", 2, 2, 5, 4), vc("vc", 2, 2, 5, 4);
  store_kv<Half>(space, k, v, kc, vc, 3, 1);
  auto hk = to_host(k), hv = to_host(v);
  auto hkc = to_host(kc), hvc = to_host(vc);
  for (int r = 0; r < 6; ++r)
    for (int j = 0; j < 8; ++j) {
      REQUIRE(hkc(r / 3, j / 4, 1 + r % 3, j % 4).bits == to_half(hk(r, j)).bits);
      REQUIRE(hvc(r / 3, j / 4, 1 + r % 3, j % 4).bits == to_half(hv(r, j)).bits);
    }
}

TEST_CASE("attention_scores and attention_apply: dimension slices reduced before the softmax", "[kernels]") {
  const AttentionCase prefill(3, 6, 2, 12, 9, 0);
  check_sliced_attention(prefill, 0, 6, 2);
  check_sliced_attention(prefill, 2, 2, 3);  // query heads 2-3 read kv heads 0 and 1
  check_sliced_attention(prefill, 3, 3, 6);
  const AttentionCase decode(2, 4, 4, 16, 1, 17);
  check_sliced_attention(decode, 1, 2, 4);
  check_sliced_attention(decode, 0, 4, 1);
}

TEST_CASE("rope: a slice of whole pairs rotates like those dimensions of the whole head", "[kernels]") {
  ExecSpace space;
  const int heads = 3, hd = 12, n = 4, pos0 = 6, batch = 2, pair_begin = 2, pairs = 3, w = 2 * pairs;
  const AxisMap slice = AxisMap::head_slice(0, hd, pair_begin, pairs);
  Matrix whole = random_matrix("x", batch * n, heads * hd, 6);
  Matrix part("part", batch * n, heads * w);
  auto hw = moeproxy::testing::snapshot(whole);
  auto hp = Kokkos::create_mirror_view(part);
  for (int r = 0; r < batch * n; ++r)
    for (int j = 0; j < heads * w; ++j) hp(r, j) = hw(r, slice(j));
  Kokkos::deep_copy(part, hp);
  apply_rope(space, whole, rope_table(space, pos0 + n, hd, 10000.0), heads, n, pos0);
  apply_rope(space, part, rope_table(space, pos0 + n, hd, 10000.0, pair_begin, pairs), heads, n, pos0);
  auto after = to_host(whole), got = to_host(part);
  for (int r = 0; r < batch * n; ++r)
    for (int j = 0; j < heads * w; ++j) REQUIRE(rel_diff(got(r, j), after(r, slice(j)), 1.0) < tight);
}

TEST_CASE("activate: GELU (tanh form) and SwiGLU", "[kernels]") {
  ExecSpace space;
  const Matrix base = random_matrix("x", 4, 9, 13, 4.0f), gate = random_matrix("g", 4, 9, 14);
  auto hx = moeproxy::testing::snapshot(base), hg = to_host(gate);
  for (Activation act : {Activation::gelu, Activation::swiglu}) {
    Matrix x("x", 4, 9);
    Kokkos::deep_copy(x, base);
    activate(space, act, x, gate);
    auto hy = to_host(x);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 9; ++j) {
        const double v = hx(i, j);
        const double want = act == Activation::swiglu
                                ? v / (1.0 + std::exp(-v)) * hg(i, j)
                                : 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
        REQUIRE(rel_diff(hy(i, j), want, 4.0) < tight);
      }
  }
}

TEST_CASE("route_top_k: softmax, top-k with ties to the lower index, renormalisation", "[kernels]") {
  ExecSpace space;
  const int t = 3, e = 6, k = 3;
  Matrix logits("logits", t, e);
  auto hl = Kokkos::create_mirror_view(logits);
  const float rows[t][e] = {{0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 0.0f},
                            {-3.0f, -2.0f, -1.0f, 0.0f, 1.0f, 2.0f},
                            {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f}};
  for (int i = 0; i < t; ++i)
    for (int j = 0; j < e; ++j) hl(i, j) = rows[i][j];
  Kokkos::deep_copy(logits, hl);
  for (bool renorm : {false, true}) {
    IndexMatrix idx("idx", t, k);
    Matrix w("w", t, k);
    route_top_k(space, logits, k, renorm, idx, w);
    auto hi = to_host(idx);
    auto hw = to_host(w);
    const int want[t][k] = {{1, 3, 4}, {5, 4, 3}, {0, 1, 2}};
    for (int i = 0; i < t; ++i) {
      double z = 0.0, picked = 0.0;
      for (int j = 0; j < e; ++j) z += std::exp(rows[i][j]);
      for (int j = 0; j < k; ++j) picked += std::exp(rows[i][want[i][j]]) / z;
      for (int j = 0; j < k; ++j) {
        REQUIRE(hi(i, j) == want[i][j]);
        const double p = std::exp(rows[i][want[i][j]]) / z;
        REQUIRE(hw(i, j) == Approx(renorm ? p / picked : p).epsilon(1e-6));
      }
    }
  }
}

TEST_CASE("permute: dropless permutation is stable by slot within each expert", "[kernels][moe]") {
  ExecSpace space;
  const int t = 50, k = 2, e = 5;
  IndexMatrix idx("idx", t, k);
  auto hi = Kokkos::create_mirror_view(idx);
  for (int i = 0; i < t; ++i) {
    hi(i, 0) = (i * 7) % e;
    hi(i, 1) = (i * 7 + 1 + i % 3) % e;
  }
  Kokkos::deep_copy(idx, hi);
  Permutation perm;
  REQUIRE(permute(space, idx, e, -1, perm) == 0);
  auto pos = to_host(perm.position);
  auto counts = to_host(perm.counts);
  auto offsets = to_host(perm.offsets);
  auto source = to_host(perm.source);
  REQUIRE(std::accumulate(counts.data(), counts.data() + e, 0) == t * k);
  std::vector<int> seen(t * k, 0), next(offsets.data(), offsets.data() + e);
  for (int s = 0; s < t * k; ++s) {
    const int ex = hi(s / k, s % k);
    REQUIRE(pos(s) == next[ex]++);  // slot order within the expert
    REQUIRE(source(pos(s)) == s / k);
    seen[pos(s)] += 1;
  }
  for (int v : seen) REQUIRE(v == 1);
}

TEST_CASE("permute: a capacity drops the latest slots and counts them", "[kernels][moe]") {
  ExecSpace space;
  const int t = 10, k = 1, e = 3;
  IndexMatrix idx("idx", t, k);
  auto hi = Kokkos::create_mirror_view(idx);
  const int choice[t] = {0, 0, 0, 0, 0, 1, 1, 2, 0, 1};  // expert 0: 6, expert 1: 3, expert 2: 1
  for (int i = 0; i < t; ++i) hi(i, 0) = choice[i];
  Kokkos::deep_copy(idx, hi);
  Permutation perm;
  REQUIRE(permute(space, idx, e, 2, perm) == 5);
  auto pos = to_host(perm.position);
  auto counts = to_host(perm.counts);
  CHECK(counts(0) == 2);
  CHECK(counts(1) == 2);
  CHECK(counts(2) == 1);
  const int want[t] = {0, 1, -1, -1, -1, 2, 3, 4, -1, -1};
  for (int i = 0; i < t; ++i) REQUIRE(pos(i) == want[i]);
}

TEST_CASE("permute: one Permutation reused at other sizes matches a naive permutation", "[kernels][moe]") {
  ExecSpace space;
  Permutation perm;
  // Larger, smaller, then larger again than the storage kept, with and without a capacity,
  // and an empty call: every result is the reference's.
  const struct {
    int tokens, k, experts, capacity;
  } calls[] = {{300, 4, 64, -1}, {7, 2, 64, 1}, {0, 2, 64, -1}, {513, 3, 64, 9}, {40, 1, 5, -1}, {600, 8, 5, 700}};
  std::uint64_t state = 17;
  for (const auto& c : calls) {
    CAPTURE(c.tokens, c.k, c.experts, c.capacity);
    IndexMatrix idx("idx", c.tokens, c.k);
    auto hi = Kokkos::create_mirror_view(idx);
    for (int t = 0; t < c.tokens; ++t)
      for (int j = 0; j < c.k; ++j) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        hi(t, j) = static_cast<int>((state >> 33) % static_cast<std::uint64_t>(c.experts));
      }
    Kokkos::deep_copy(idx, hi);
    const int slots = c.tokens * c.k;
    std::vector<int> seen(c.experts, 0), want_counts(c.experts, 0), want_rank(slots, -1);
    std::int64_t want_dropped = 0;
    for (int s = 0; s < slots; ++s) {
      const int e = hi(s / c.k, s % c.k);
      if (c.capacity >= 0 && seen[e] >= c.capacity) ++want_dropped;
      else want_rank[s] = want_counts[e]++;
      ++seen[e];
    }
    REQUIRE(permute(space, idx, c.experts, c.capacity, perm) == want_dropped);
    auto pos = to_host(perm.position);
    auto counts = to_host(perm.counts);
    auto source = to_host(perm.source);
    REQUIRE(static_cast<int>(perm.position.extent(0)) == slots);
    std::vector<int> offsets(c.experts + 1, 0);
    for (int e = 0; e < c.experts; ++e) {
      REQUIRE(counts(e) == want_counts[e]);
      REQUIRE(perm.host_counts(e) == want_counts[e]);
      offsets[e + 1] = offsets[e] + want_counts[e];
    }
    REQUIRE(static_cast<int>(perm.source.extent(0)) == offsets[c.experts]);
    for (int s = 0; s < slots; ++s) {
      const int e = hi(s / c.k, s % c.k);
      REQUIRE(pos(s) == (want_rank[s] < 0 ? -1 : offsets[e] + want_rank[s]));
      if (pos(s) >= 0) REQUIRE(source(pos(s)) == s / c.k);
    }
  }
}

TEST_CASE("gather_rows and combine: weighted sum over kept slots", "[kernels][moe]") {
  ExecSpace space;
  const int t = 4, k = 2, d = 3, rows = 6;
  const Matrix y = random_matrix("y", rows, d, 21);
  Matrix x("x", t, d), w("w", t, k);
  IndexVector position("pos", t * k);
  auto hp = Kokkos::create_mirror_view(position);
  auto hw = Kokkos::create_mirror_view(w);
  const int p[t * k] = {3, 0, -1, 5, 1, 2, 4, -1};
  for (int s = 0; s < t * k; ++s) {
    hp(s) = p[s];
    hw(s / k, s % k) = 0.25f + 0.1f * s;
  }
  Kokkos::deep_copy(position, hp);
  Kokkos::deep_copy(w, hw);
  Kokkos::deep_copy(x, 1.0f);
  combine(space, y, position, w, x);
  auto hy = to_host(y), hx = to_host(x);
  for (int i = 0; i < t; ++i)
    for (int j = 0; j < d; ++j) {
      double want = 1.0;
      for (int s = 0; s < k; ++s)
        if (p[i * k + s] >= 0) want += double(hw(i, s)) * hy(p[i * k + s], j);
      REQUIRE(hx(i, j) == Approx(want).epsilon(1e-6));
    }
  IndexVector source("src", 3);
  auto hs = Kokkos::create_mirror_view(source);
  hs(0) = 2;
  hs(1) = 0;
  hs(2) = 2;
  Kokkos::deep_copy(source, hs);
  Matrix g("g", 3, d);
  gather_rows(space, y, source, g);
  auto hgath = to_host(g);
  for (int r = 0; r < 3; ++r)
    for (int j = 0; j < d; ++j) REQUIRE(hgath(r, j) == hy(hs(r), j));
}

TEST_CASE("route_synthetic: Zipf skews towards low experts, k distinct, deterministic", "[kernels][moe]") {
  ExecSpace space;
  const int t = 4000, e = 8, k = 2;
  IndexMatrix a("a", t, k), b("b", t, k);
  Matrix wa("wa", t, k), wb("wb", t, k);
  const RoutingCdf cdf = routing_cdf(space, e, 1.2);
  route_synthetic(space, 5, 1, 100, cdf, a, wa);
  route_synthetic(space, 5, 1, 100, cdf, b, wb);
  auto ha = to_host(a), hb = to_host(b);
  auto hw = to_host(wa);
  std::vector<int> count(e, 0);
  for (int i = 0; i < t; ++i) {
    REQUIRE(ha(i, 0) != ha(i, 1));
    for (int j = 0; j < k; ++j) {
      REQUIRE(ha(i, j) == hb(i, j));
      REQUIRE(hw(i, j) == 0.5f);
      count[ha(i, j)] += 1;
    }
  }
  CHECK(count[0] > 2 * count[e - 1]);
  CHECK(count[0] > count[e / 2]);
  CHECK(count[e / 2] > count[e - 1]);
}

// The int8 transfer rows against a host quantiser written from their definition.
TEST_CASE("int8 rows: quantise and dequantise match a naive host quantiser", "[kernels]") {
  ExecSpace space;
  const int d = 13, rows = 6;  // 13: the last packed word holds one value and three zero bytes
  const int words = int8_row_words(d);
  REQUIRE(words == 1 + 4);
  Matrix x = random_matrix("x", rows, d, 7);
  auto hx = Kokkos::create_mirror_view(x);
  Kokkos::deep_copy(hx, x);
  for (int j = 0; j < d; ++j) {
    hx(1, j) = 0.0f;                                   // a zero row stays zero
    hx(2, j) = j % 2 ? 3.0e38f : -1.0e37f;             // near FLT_MAX
    hx(3, j) = 1.0e-38f * static_cast<float>(j - 6);   // tiny: the scale is subnormal
    hx(4, j) = j == 5 ? -1.0e30f : 1.0e-10f * j;       // one outlier: the rest round to zero
  }
  Kokkos::deep_copy(x, hx);
  Matrix packed("packed", rows, words), back("back", rows, d);
  quantize_int8_rows(space, x, packed);
  dequantize_int8_rows(space, packed, back);
  space.fence();
  const auto hp = moeproxy::testing::snapshot(packed);
  const auto hb = moeproxy::testing::snapshot(back);
  for (int t = 0; t < rows; ++t) {
    float peak = 0.0f;
    for (int j = 0; j < d; ++j) peak = std::max(peak, std::abs(hx(t, j)));
    const float scale = peak / 127.0f;
    CHECK(hp(t, 0) == scale);
    const auto* bytes = reinterpret_cast<const unsigned char*>(&hp(t, 1));
    for (int j = 0; j < d; ++j) {
      const double exact = scale > 0.0f ? static_cast<double>(hx(t, j)) / scale : 0.0;
      const long expected = std::lround(std::max(-127.0, std::min(127.0, exact)));
      const int code = bytes[j] > 127 ? bytes[j] - 256 : bytes[j];
      INFO("row " << t << " column " << j << " x " << hx(t, j) << " scale " << scale);
      // x / scale in float may land one ulp to either side of a half: either neighbour is right there.
      CHECK(std::abs(code - expected) <= (std::abs(std::abs(exact - std::trunc(exact)) - 0.5) < 1e-5 ? 1 : 0));
      CHECK(std::abs(code) <= 127);
      CHECK(hb(t, j) == static_cast<float>(code) * scale);
      // The bound the verification tolerance rests on (compression_tolerance): |x - q s| <= s / 2.
      CHECK(std::abs(static_cast<double>(hb(t, j)) - hx(t, j)) <= 0.5 * scale * (1.0 + 1e-5) + 1e-45);
    }
    for (int j = d; j < 4 * (words - 1); ++j) CHECK(bytes[j] == 0);
  }
  for (int j = 0; j < d; ++j) CHECK(hb(1, j) == 0.0f);
  CHECK(hb(4, 5) == -1.0e30f);
  CHECK(std::abs(hb(2, 1)) == 3.0e38f);
}
