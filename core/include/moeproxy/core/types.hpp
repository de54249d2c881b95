#pragma once
// Kokkos types shared by the kernels. The execution space is chosen once, at compile time,
// as Kokkos' default; every kernel still takes the instance it runs on as first argument.

#include <Kokkos_Core.hpp>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "moeproxy/core/half.hpp"

namespace moeproxy {

using ExecSpace = Kokkos::DefaultExecutionSpace;
using MemSpace = ExecSpace::memory_space;
// Kernels run on the host's cores, where a team is one thread, rather than on a GPU: the
// kernels that divide their work differently on the two ask this.
constexpr bool kernels_on_host = std::is_same<MemSpace, Kokkos::HostSpace>::value;

// Activations and weights: row-major [rows, cols], a token per row.
using Matrix = Kokkos::View<float**, Kokkos::LayoutRight, MemSpace>;
using ConstMatrix = Kokkos::View<const float**, Kokkos::LayoutRight, MemSpace>;
using Vector = Kokkos::View<float*, MemSpace>;
using ConstVector = Kokkos::View<const float*, MemSpace>;
using IndexVector = Kokkos::View<int*, MemSpace>;
using ConstIndexVector = Kokkos::View<const int*, MemSpace>;
using IndexMatrix = Kokkos::View<int**, Kokkos::LayoutRight, MemSpace>;
// Weights and KV cache in binary16 storage (model.precision = "fp16").
using HalfMatrix = Kokkos::View<Half**, Kokkos::LayoutRight, MemSpace>;
using ConstHalfMatrix = Kokkos::View<const Half**, Kokkos::LayoutRight, MemSpace>;
// KV cache: [batch, kv_heads, positions, head_dim], float or Half.
template <class T>
using CacheOf = Kokkos::View<T****, Kokkos::LayoutRight, MemSpace>;
using Cache = CacheOf<float>;
using HalfCache = CacheOf<Half>;
// Attention scores of a call: [B*n, heads, context], one row of the context per (query, head).
using Scores = Kokkos::View<float***, Kokkos::LayoutRight, MemSpace>;

using HostMatrix = Kokkos::View<float**, Kokkos::LayoutRight, Kokkos::HostSpace>;
// Host staging of rows copied to or from the device on every layer: page-locked on CUDA,
// where a copy from pageable memory goes through a driver bounce buffer and blocks the host.
#ifdef KOKKOS_ENABLE_CUDA
using StagingSpace = Kokkos::CudaHostPinnedSpace;
#else
using StagingSpace = Kokkos::HostSpace;
#endif
using StagingMatrix = Kokkos::View<float**, Kokkos::LayoutRight, StagingSpace>;
using StagingIndexVector = Kokkos::View<int*, StagingSpace>;

// Buffers kept across layers and passes allocate once: `reserve_*` reallocates one (to zeros,
// dropping its contents) only when it is too small or its rows have another width, and
// callers work on its first rows.
template <class View>
void reserve_rows(View& v, int rows, int cols, const std::string& label) {
  if (static_cast<int>(v.extent(0)) < rows || static_cast<int>(v.extent(1)) != cols) v = View(label, rows, cols);
}
template <class View>
void reserve_elements(View& v, int n, const std::string& label) {
  if (static_cast<int>(v.extent(0)) < n) v = View(label, n);
}
template <class View>
View first_rows(const View& v, int rows) {
  return Kokkos::subview(v, std::make_pair(0, rows), Kokkos::ALL);
}
// The first `rows` rows of `v`, reserved first: the usual way to use a kept buffer.
template <class View>
View reserved_rows(View& v, int rows, int cols, const std::string& label) {
  reserve_rows(v, rows, cols, label);
  return first_rows(v, rows);
}

// A fence with a name where Kokkos supports one (named fences came after 3.4), so that
// Kokkos Tools and Nsight attribute waits to the code that asked for them.
inline void named_fence(const ExecSpace& space, const char* name) {
#if KOKKOS_VERSION >= 30600
  space.fence(name);
#else
  (void)name;
  space.fence();
#endif
}

// e^x on the host, inline: Cephes' single-precision exponential (x = n ln2 + r, |r| <= ln2 / 2,
// a degree-5 polynomial in r, 2^n built in the exponent bits; within 1 ulp of e^x over
// [-87, 88]), its selects free of branches so that the compiler can vectorise loops over it
// (core/CMakeLists.txt: -fno-trapping-math). The libm call can be neither vectorised nor
// inlined and clobbers every vector register: replacing it took a 512-token prefill's
// attention from 212 to 184 ms on a CPU core (2026-12-06). Below -87 (e^x < 2^-125) the
// result is 0, as a masked score needs; above 88 it is e^88 rather than infinity.
inline float exp_host(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Rounded to nearest as the truncation of a positive number (x log2 e >= -125.6).
  const int n = static_cast<int>(xc * 1.44269504088896341f + 126.5f) - 126;
  const float fn = static_cast<float>(n);
  const float r = xc - fn * 0.693359375f + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const std::int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = (p * r * r + r + 1.0f) * scale;
  return x < -87.0f ? 0.0f : y;
}

// Device math that compiles under nvcc and g++ alike (Kokkos 3.4 and 4.x spell their math
// functions differently, so we keep our own few).
KOKKOS_INLINE_FUNCTION float exp_f(float x) {
#ifdef __CUDA_ARCH__
  return ::expf(x);
#else
  return exp_host(x);
#endif
}
KOKKOS_INLINE_FUNCTION float floor_f(float x) {
#ifdef __CUDA_ARCH__
  return ::floorf(x);
#else
  return std::floor(x);
#endif
}
KOKKOS_INLINE_FUNCTION float sqrt_f(float x) {
#ifdef __CUDA_ARCH__
  return ::sqrtf(x);
#else
  return std::sqrt(x);
#endif
}
KOKKOS_INLINE_FUNCTION double pow_d(double x, double y) {
#ifdef __CUDA_ARCH__
  return ::pow(x, y);
#else
  return std::pow(x, y);
#endif
}
KOKKOS_INLINE_FUNCTION void sincos_d(double x, double* s, double* c) {
#ifdef __CUDA_ARCH__
  ::sincos(x, s, c);
#else
  *s = std::sin(x);
  *c = std::cos(x);
#endif
}

}  // namespace moeproxy
