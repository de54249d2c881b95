#include "moeproxy/core/gemm.hpp"

#include <KokkosBlas3_gemm.hpp>

#include <stdexcept>
#include <utility>

#ifdef MOEPROXY_CUBLAS
#include "gemm_cublas.hpp"
#endif

namespace moeproxy {

StoredMatrix StoredStack::operator[](int e) const {
  if (is_half()) return ConstHalfMatrix(Kokkos::subview(f16, e, Kokkos::ALL, Kokkos::ALL));
  return ConstMatrix(Kokkos::subview(f32, e, Kokkos::ALL, Kokkos::ALL));
}

void round_into(const ExecSpace& space, const ConstMatrix& src, const HalfMatrix& dst) {
  Kokkos::parallel_for(
      "moeproxy::gemm::round_into",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {src.extent(0), src.extent(1)}),
      KOKKOS_LAMBDA(const int i, const int j) { dst(i, j) = to_half(src(i, j)); });
}

void widen_into(const ExecSpace& space, const ConstHalfMatrix& src, const Matrix& dst) {
  Kokkos::parallel_for(
      "moeproxy::gemm::widen_into",
      Kokkos::MDRangePolicy<ExecSpace, Kokkos::Rank<2>>(space, {0, 0}, {src.extent(0), src.extent(1)}),
      KOKKOS_LAMBDA(const int i, const int j) { dst(i, j) = to_float(src(i, j)); });
}

namespace {

// The A operand as the backend reads it: fp32, or the binary16 rounding of A for a GEMM
// with a binary16 B (on the host its values widened back to fp32, which is exact).
struct PreparedA {
  ConstMatrix f32;
  ConstHalfMatrix f16;

  PreparedA rows(int begin, int end) const {
    const auto r = std::make_pair(begin, end);
    if (f16.data() != nullptr) return PreparedA{ConstMatrix(), Kokkos::subview(f16, r, Kokkos::ALL)};
    return PreparedA{Kokkos::subview(f32, r, Kokkos::ALL), ConstHalfMatrix()};
  }
};

PreparedA prepare(const ExecSpace& space, const ConstMatrix& a, bool half, GemmScratch& scratch) {
  if (!half) return PreparedA{a, ConstHalfMatrix()};
  const int rows = static_cast<int>(a.extent(0)), cols = static_cast<int>(a.extent(1));
  const HalfMatrix rounded = scratch.rounded_a(rows, cols);
  round_into(space, a, rounded);
#ifdef MOEPROXY_CUBLAS
  return PreparedA{ConstMatrix(), rounded};
#else
  const Matrix wide = scratch.widened_a(rows, cols);
  widen_into(space, rounded, wide);
  return PreparedA{wide, ConstHalfMatrix()};
#endif
}

void product(const ExecSpace& space, const PreparedA& a, const StoredMatrix& b, const Matrix& c, float alpha,
             float beta, bool transpose_b, GemmScratch& scratch) {
  const int m = static_cast<int>(c.extent(0)), n = static_cast<int>(c.extent(1));
  const int k = static_cast<int>(b.extent(transpose_b ? 1 : 0));
  if (m == 0 || n == 0) return;
#ifdef MOEPROXY_CUBLAS
  (void)scratch;  // cuBLAS reads a binary16 B as it is
  const bool half = b.is_half();
  const cublas::Operand ao{half ? static_cast<const void*>(a.f16.data()) : a.f32.data(), half,
                           static_cast<int>(half ? a.f16.stride_0() : a.f32.stride_0())};
  const cublas::Operand bo{half ? static_cast<const void*>(b.f16.data()) : b.f32.data(), half,
                           static_cast<int>(half ? b.f16.stride_0() : b.f32.stride_0())};
  cublas::gemm(space, m, n, k, ao, bo, transpose_b, alpha, beta, c.data(), static_cast<int>(c.stride_0()));
#else
  (void)k;
  ConstMatrix wide_b = b.f32;
  if (b.is_half()) {
    const Matrix wide = scratch.widened_b(static_cast<int>(b.f16.extent(0)), static_cast<int>(b.f16.extent(1)));
    widen_into(space, b.f16, wide);
    wide_b = wide;
  }
  // Kokkos Kernels 3.4's gemm has no execution-space argument and runs on the default
  // instance; fence ours first so ordering holds when a caller uses another instance.
  named_fence(space, "moeproxy::gemm::order");
  KokkosBlas::gemm("N", transpose_b ? "T" : "N", alpha, a.f32, wide_b, beta, c);
#endif
}

}  // namespace

void gemm(const ExecSpace& space, const ConstMatrix& a, const StoredMatrix& b, const Matrix& c,
          GemmScratch& scratch, float alpha, float beta, bool transpose_b) {
  if (c.extent(0) == 0 || c.extent(1) == 0) return;
  product(space, prepare(space, a, b.is_half(), scratch), b, c, alpha, beta, transpose_b, scratch);
}

void gemm(const ExecSpace& space, const ConstMatrix& a, const StoredMatrix& b, const Matrix& c, float alpha,
          float beta, bool transpose_b) {
  GemmScratch scratch;
  gemm(space, a, b, c, scratch, alpha, beta, transpose_b);
}

void gemm_grouped(const ExecSpace& space, const ConstMatrix& a, const std::vector<GemmGroup>& groups,
                  const StoredStack& b, const Matrix& c) {
  GemmScratch scratch;
  gemm_grouped(space, a, groups, b, c, scratch);
}

void gemm_grouped(const ExecSpace& space, const ConstMatrix& a, const std::vector<GemmGroup>& groups,
                  const StoredStack& b, const Matrix& c, GemmScratch& scratch) {
  int total = 0;
  for (const GemmGroup& g : groups) total += g.rows;
  if (total > static_cast<int>(a.extent(0)) || total > static_cast<int>(c.extent(0)))
    throw std::invalid_argument("gemm_grouped: groups cover " + std::to_string(total) + " rows, A has " +
                                std::to_string(a.extent(0)) + " and C " + std::to_string(c.extent(0)));
  if (total == 0) return;
  // A is rounded once for all groups; each group is then one GEMM on its rows.
  const PreparedA prepared =
      prepare(space, Kokkos::subview(a, std::make_pair(0, total), Kokkos::ALL), b.is_half(), scratch);
  int row = 0;
  for (const GemmGroup& g : groups) {
    if (g.rows == 0) continue;
    product(space, prepared.rows(row, row + g.rows), b[g.index],
            Kokkos::subview(c, std::make_pair(row, row + g.rows), Kokkos::ALL), 1.0f, 0.0f, false, scratch);
    row += g.rows;
  }
}

}  // namespace moeproxy
