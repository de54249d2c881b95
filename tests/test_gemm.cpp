// The GEMM interface (plain and grouped, fp32 and binary16 storage) against naive products,
// and the binary16 conversion it relies on.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>

#include "moeproxy/core/gemm.hpp"
#include "test_helpers.hpp"

using namespace moeproxy;
using moeproxy::testing::random_matrix;
using moeproxy::testing::snapshot;
using moeproxy::testing::to_host;

namespace {

std::uint16_t bits_of(float v) { return to_half(v).bits; }

float from_bits(std::uint32_t x) {
  float v;
  std::memcpy(&v, &x, sizeof v);
  return v;
}

// A binary16 copy of an fp32 matrix, made on the device.
HalfMatrix to_half_matrix(const ExecSpace& space, const Matrix& m) {
  HalfMatrix h("half", m.extent(0), m.extent(1));
  round_into(space, m, h);
  space.fence();
  return h;
}

// max |got - want| / max |want| over a [rows, cols] host result against double products.
template <class Got>
double rel_error(const Got& got, const std::vector<double>& want, int rows, int cols) {
  double diff = 0.0, scale = 0.0;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      diff = std::max(diff, std::abs(got(i, j) - want[static_cast<std::size_t>(i) * cols + j]));
      scale = std::max(scale, std::abs(want[static_cast<std::size_t>(i) * cols + j]));
    }
  return diff / scale;
}

// C = A * op(B) in double over host copies; `round` rounds A and B to binary16 first.
template <class A, class B>
std::vector<double> naive(const A& a, const B& b, bool transpose_b, bool round, int row0 = 0, int rows = -1) {
  const int m = rows < 0 ? static_cast<int>(a.extent(0)) : rows, k = static_cast<int>(a.extent(1));
  const int n = static_cast<int>(transpose_b ? b.extent(0) : b.extent(1));
  auto r = [round](float v) { return round ? double(round_to_half(v)) : double(v); };
  std::vector<double> c(static_cast<std::size_t>(m) * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p)
        c[static_cast<std::size_t>(i) * n + j] += r(a(row0 + i, p)) * r(transpose_b ? b(j, p) : b(p, j));
  return c;
}

// fp32 accumulation against double sums of the same (exact) products.
constexpr double tight = 1e-5;
// Against unrounded operands: a binary16 rounding of each operand (2^-11 relative) in sums
// of random-sign products.
constexpr double half_vs_fp32 = 4e-3;

}  // namespace

TEST_CASE("binary16: exact values, ties to even, subnormals, overflow to inf, NaN", "[gemm][half]") {
  CHECK(bits_of(0.0f) == 0x0000);
  CHECK(bits_of(-0.0f) == 0x8000);
  CHECK(bits_of(1.0f) == 0x3c00);
  CHECK(bits_of(-2.0f) == 0xc000);
  CHECK(bits_of(0.1f) == 0x2e66);
  CHECK(bits_of(65504.0f) == 0x7bff);
  // Halfway cases go to the even neighbour.
  CHECK(bits_of(1.0f + 0x1p-11f) == 0x3c00);
  CHECK(bits_of(1.0f + 3 * 0x1p-11f) == 0x3c02);
  CHECK(bits_of(std::nextafter(1.0f + 0x1p-11f, 2.0f)) == 0x3c01);
  // Overflow: 65520 is the midpoint to 2^16 and rounds (to even) to inf; just below stays finite.
  CHECK(bits_of(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
  CHECK(bits_of(65520.0f) == 0x7c00);
  CHECK(bits_of(-1e6f) == 0xfc00);
  CHECK(bits_of(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK(bits_of(-std::numeric_limits<float>::infinity()) == 0xfc00);
  const std::uint16_t nan = bits_of(std::numeric_limits<float>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  CHECK(std::isnan(to_float(Half{nan})));
  // Subnormals: units of 2^-24; 2^-25 is a tie to 0, 1.5 * 2^-24 a tie to 2 units.
  CHECK(bits_of(0x1p-14f) == 0x0400);
  CHECK(bits_of(0x1p-24f) == 0x0001);
  CHECK(bits_of(0x1p-25f) == 0x0000);
  CHECK(bits_of(std::nextafter(0x1p-25f, 1.0f)) == 0x0001);
  CHECK(bits_of(1.5f * 0x1p-24f) == 0x0002);
  CHECK(bits_of(2.5f * 0x1p-24f) == 0x0002);
  CHECK(bits_of(-3.0f * 0x1p-24f) == 0x8003);
  CHECK(bits_of(0x1p-14f - 0x1p-25f) == 0x0400);  // 1023.5 units: to the even 1024, the smallest normal
  CHECK(bits_of(1e-30f) == 0x0000);
  CHECK(bits_of(from_bits(0x00000001u)) == 0x0000);  // a float subnormal
  CHECK(to_float(Half{0x0001}) == 0x1p-24f);
  CHECK(to_float(Half{0x03ff}) == 1023 * 0x1p-24f);
  CHECK(to_float(Half{0x7bff}) == 65504.0f);
  CHECK(to_float(Half{0xfc00}) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("binary16: every value round-trips, and rounding picks the nearest", "[gemm][half]") {
  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const Half h{static_cast<std::uint16_t>(b)};
    if ((b & 0x7c00u) == 0x7c00u && (b & 0x3ffu) != 0) continue;  // NaN payloads are not kept
    REQUIRE(to_half(to_float(h)).bits == h.bits);
  }
  // Floats spread over binary16's range (and beyond): no representable value is nearer.
  const std::uint64_t s = tensor_stream(5, TensorKind::input, 0, 0);
  for (int i = 0; i < 200000; ++i) {
    const float v = std::ldexp(uniform_at(s, i, 0), static_cast<int>(uniform_at(s, i, 1) * 20.0f) - 6);
    const Half h = to_half(v);
    const double got = to_float(h), err = std::abs(got - double(v));
    for (const int step : {-1, 1}) {
      const Half other{static_cast<std::uint16_t>(h.bits + step)};
      if ((other.bits & 0x7fffu) >= 0x7c00u || ((other.bits ^ h.bits) & 0x8000u)) continue;
      REQUIRE(err <= std::abs(double(to_float(other)) - double(v)));
    }
  }
}

TEST_CASE("binary16: the device rounds like the host", "[gemm][half]") {
  ExecSpace space;
  const Matrix m = random_matrix("m", 37, 29, 3, 3.0f);
  auto hm = snapshot(m);
  auto hh = to_host(to_half_matrix(space, m));
  for (int i = 0; i < 37; ++i)
    for (int j = 0; j < 29; ++j) REQUIRE(hh(i, j).bits == to_half(hm(i, j)).bits);
  Matrix back("back", 37, 29);
  widen_into(space, to_half_matrix(space, m), back);
  space.fence();
  auto hb = to_host(back);
  for (int i = 0; i < 37; ++i)
    for (int j = 0; j < 29; ++j) REQUIRE(hb(i, j) == round_to_half(hm(i, j)));
}

TEST_CASE("gemm: fp32 odd shapes, B and B^T, alpha and beta, empty results", "[gemm]") {
  ExecSpace space;
  for (const auto& [m, k, n] : {std::array<int, 3>{7, 13, 5}, {1, 1, 1}, {33, 3, 17}, {2, 65, 1}}) {
    const Matrix a = random_matrix("a", m, k, 1), b = random_matrix("b", k, n, 2), bt = random_matrix("bt", n, k, 3);
    Matrix c("c", m, n), c2 = random_matrix("c2", m, n, 4);
    auto c2_before = snapshot(c2);
    gemm(space, a, b, c);
    gemm(space, a, bt, c2, 0.5f, 1.0f, true);
    space.fence();
    auto ha = to_host(a), hc = to_host(c), hc2 = to_host(c2);
    CHECK(rel_error(hc, naive(ha, to_host(b), false, false), m, n) < tight);
    std::vector<double> want = naive(ha, to_host(bt), true, false);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) want[static_cast<std::size_t>(i) * n + j] = c2_before(i, j) + 0.5 * want[static_cast<std::size_t>(i) * n + j];
    CHECK(rel_error(hc2, want, m, n) < tight);
  }
  Matrix none("none", 0, 4);
  gemm(space, Matrix("a", 0, 3), random_matrix("b", 3, 4, 5), none);
}

TEST_CASE("gemm: binary16 B rounds A too, accumulates in fp32", "[gemm]") {
  ExecSpace space;
  for (const auto& [m, k, n] : {std::array<int, 3>{7, 13, 5}, {1, 1, 1}, {33, 70, 17}}) {
    const Matrix a = random_matrix("a", m, k, 6, 2.0f), b = random_matrix("b", k, n, 7), bt = random_matrix("bt", n, k, 8);
    Matrix c("c", m, n), ct("ct", m, n);
    gemm(space, a, StoredMatrix(to_half_matrix(space, b)), c);
    gemm(space, a, StoredMatrix(to_half_matrix(space, bt)), ct, 1.0f, 0.0f, true);
    space.fence();
    auto ha = to_host(a), hb = to_host(b), hbt = to_host(bt), hc = to_host(c), hct = to_host(ct);
    // Products of binary16 values are exact: only fp32 summation separates us from double.
    CHECK(rel_error(hc, naive(ha, hb, false, true), m, n) < tight);
    CHECK(rel_error(hct, naive(ha, hbt, true, true), m, n) < tight);
    // And the rounding is real: fp16 storage is near, not equal to, the fp32 product.
    const double vs_fp32 = rel_error(hc, naive(ha, hb, false, false), m, n);
    CHECK(vs_fp32 < half_vs_fp32);
    CHECK(vs_fp32 > tight);
  }
}

TEST_CASE("gemm: one scratch serves binary16 GEMMs of every shape in turn", "[gemm]") {
  ExecSpace space;
  GemmScratch scratch;
  // Larger, smaller, then larger than both: the scratch grows, is reused from its front, grows again.
  int seed = 40;
  for (const auto& [m, k, n] : {std::array<int, 3>{33, 70, 17}, {7, 13, 5}, {40, 90, 21}, {1, 90, 3}}) {
    const Matrix a = random_matrix("a", m, k, ++seed, 2.0f), b = random_matrix("b", k, n, ++seed);
    const Matrix bt = random_matrix("bt", n, k, ++seed);
    Matrix c("c", m, n), ct("ct", m, n);
    gemm(space, a, StoredMatrix(to_half_matrix(space, b)), c, scratch);
    gemm(space, a, StoredMatrix(to_half_matrix(space, bt)), ct, scratch, 1.0f, 0.0f, true);
    space.fence();
    auto ha = to_host(a), hb = to_host(b), hbt = to_host(bt), hc = to_host(c), hct = to_host(ct);
    CHECK(rel_error(hc, naive(ha, hb, false, true), m, n) < tight);
    CHECK(rel_error(hct, naive(ha, hbt, true, true), m, n) < tight);
  }
  // A grouped GEMM on the same scratch, after those.
  const int k = 11, n = 9, rows = 6;
  Stack stack("stack", 2, k, n);
  HalfStack half_stack("half_stack", 2, k, n);
  for (int e = 0; e < 2; ++e) {
    Kokkos::deep_copy(Kokkos::subview(stack, e, Kokkos::ALL, Kokkos::ALL), random_matrix("b", k, n, 60 + e));
    round_into(space, Kokkos::subview(stack, e, Kokkos::ALL, Kokkos::ALL),
               Kokkos::subview(half_stack, e, Kokkos::ALL, Kokkos::ALL));
  }
  const Matrix a = random_matrix("a", rows, k, 62);
  Matrix c("c", rows, n);
  gemm_grouped(space, a, {{2, 1}, {4, 0}}, StoredStack{Stack(), half_stack}, c, scratch);
  space.fence();
  auto ha = to_host(a), hc = snapshot(c);
  auto hs = snapshot(stack);
  CHECK(rel_error(Kokkos::subview(hc, std::make_pair(0, 2), Kokkos::ALL),
                  naive(ha, Kokkos::subview(hs, 1, Kokkos::ALL, Kokkos::ALL), false, true, 0, 2), 2, n) < tight);
  CHECK(rel_error(Kokkos::subview(hc, std::make_pair(2, 6), Kokkos::ALL),
                  naive(ha, Kokkos::subview(hs, 0, Kokkos::ALL, Kokkos::ALL), false, true, 2, 4), 4, n) < tight);
}

TEST_CASE("gemm_grouped: each group's rows through its own matrix, fp32 and binary16", "[gemm]") {
  ExecSpace space;
  const int k = 11, n = 9, experts = 4;
  // Groups of odd sizes, an empty one, a matrix used twice and one unused.
  const std::vector<GemmGroup> groups{{3, 2}, {0, 1}, {5, 0}, {1, 2}, {4, 3}};
  const int rows = 13;
  const Matrix a = random_matrix("a", rows + 2, k, 9);  // two rows past the groups: untouched
  Stack stack("stack", experts, k, n);
  for (int e = 0; e < experts; ++e)
    Kokkos::deep_copy(Kokkos::subview(stack, e, Kokkos::ALL, Kokkos::ALL), random_matrix("b", k, n, 20 + e));
  HalfStack half_stack("half_stack", experts, k, n);
  for (int e = 0; e < experts; ++e)
    round_into(space, Kokkos::subview(stack, e, Kokkos::ALL, Kokkos::ALL),
               Kokkos::subview(half_stack, e, Kokkos::ALL, Kokkos::ALL));
  for (const bool half : {false, true}) {
    StoredStack b;
    if (half)
      b.f16 = half_stack;
    else
      b.f32 = stack;
    Matrix c("c", rows + 2, n);
    Kokkos::deep_copy(c, 7.0f);
    gemm_grouped(space, a, groups, b, c);
    space.fence();
    auto ha = to_host(a), hc = snapshot(c);
    auto hs = snapshot(stack);
    int row = 0;
    for (const GemmGroup& g : groups) {
      const auto be = Kokkos::subview(hs, g.index, Kokkos::ALL, Kokkos::ALL);
      if (g.rows > 0) {
        const auto cg = Kokkos::subview(hc, std::make_pair(row, row + g.rows), Kokkos::ALL);
        CHECK(rel_error(cg, naive(ha, be, false, half, row, g.rows), g.rows, n) < tight);
      }
      row += g.rows;
    }
    for (int i = rows; i < rows + 2; ++i)
      for (int j = 0; j < n; ++j) CHECK(hc(i, j) == 7.0f);
  }
  CHECK_THROWS_WITH(gemm_grouped(space, a, {{rows + 3, 0}}, StoredStack{stack, HalfStack()}, Matrix("c", rows + 3, n)),
                    Catch::Contains("gemm_grouped: groups cover 16 rows"));
}
