#pragma once
// Small host-side helpers for the kernel and model tests.

#include <cstdint>
#include <string>
#include <vector>

#include "moeproxy/core/hash.hpp"
#include "moeproxy/core/types.hpp"

namespace moeproxy::testing {

inline Matrix random_matrix(const std::string& label, int rows, int cols, std::uint64_t seed, float scale = 1.0f) {
  Matrix m(label, rows, cols);
  auto h = Kokkos::create_mirror_view(m);
  const std::uint64_t stream = tensor_stream(seed, TensorKind::input, 99, 0);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) h(i, j) = scale * uniform_at(stream, i, j);
  Kokkos::deep_copy(m, h);
  return m;
}

template <class View>
auto to_host(const View& v) {
  return Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), v);
}

// A copy that later kernels cannot change (to_host may alias the view on host spaces).
template <class View>
auto snapshot(const View& v) {
  auto copy = Kokkos::create_mirror(Kokkos::HostSpace(), v);
  Kokkos::deep_copy(copy, v);
  return copy;
}

inline std::vector<float> flatten(const Matrix& m) {
  auto h = to_host(m);
  return std::vector<float>(h.data(), h.data() + h.span());
}

}  // namespace moeproxy::testing
