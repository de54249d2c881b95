// Every kernel against a naive host loop.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

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
  apply_rope(space, x, heads, hd, n, pos0, 10000.0);
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
// Attention of n queries at positions [pos0, pos0 + n) with grouped kv heads, naive.
void check_attention(int batch, int heads, int kv_heads, int hd, int n, int pos0) {
  ExecSpace space;
  const int ctx = pos0 + n;
  Cache kc("k", batch, kv_heads, ctx + 2, hd), vc("v", batch, kv_heads, ctx + 2, hd);
  auto hk = Kokkos::create_mirror_view(kc);
  auto hv = Kokkos::create_mirror_view(vc);
  const std::uint64_t s = tensor_stream(11, TensorKind::input, 0, 0);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < kv_heads; ++h)
      for (int p = 0; p < ctx + 2; ++p)
        for (int e = 0; e < hd; ++e) {
          hk(b, h, p, e) = 2.0f * uniform_at(s, b * 1000 + h * 100 + p, e);
          hv(b, h, p, e) = uniform_at(s, b * 1000 + h * 100 + p, 500 + e);
        }
  Kokkos::deep_copy(kc, hk);
  Kokkos::deep_copy(vc, hv);
  const Matrix q = random_matrix("q", batch * n, heads * hd, 12, 2.0f);
  Matrix out("out", batch * n, heads * hd);
  const float scale = 1.0f / std::sqrt(float(hd));
  attention(space, q, kc, vc, out, n, pos0, scale, 0, heads / kv_heads);
  auto hq = to_host(q), ho = to_host(out);
  for (int r = 0; r < batch * n; ++r)
    for (int h = 0; h < heads; ++h) {
      const int b = r / n, pos = pos0 + r % n, kvh = h / (heads / kv_heads);
      std::vector<double> w(pos + 1);
      for (int j = 0; j <= pos; ++j) {
        double acc = 0.0;
        for (int e = 0; e < hd; ++e) acc += double(hq(r, h * hd + e)) * hk(b, kvh, j, e);
        w[j] = acc * scale;
      }
      const double mx = *std::max_element(w.begin(), w.end());
      double sum = 0.0;
      for (double& v : w) sum += (v = std::exp(v - mx));
      for (int e = 0; e < hd; ++e) {
        double acc = 0.0;
        for (int j = 0; j <= pos; ++j) acc += w[j] * hv(b, kvh, j, e);
        REQUIRE(rel_diff(ho(r, h * hd + e), acc / sum, 1.0) < tight);
      }
    }
}
}  // namespace

TEST_CASE("attention: causal prefill with grouped kv heads matches naive softmax", "[kernels]") {
  check_attention(3, 6, 2, 12, 9, 0);
}

TEST_CASE("attention: decode against a longer cache, masked beyond the query", "[kernels]") {
  check_attention(2, 4, 4, 16, 1, 17);
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
  route_synthetic(space, 5, 1, 100, e, 1.2, a, wa);
  route_synthetic(space, 5, 1, 100, e, 1.2, b, wb);
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
