#pragma once
// Counter-based weight generation: every weight is a pure function of
// (seed, tensor kind, layer, expert, global row, global column), so any rank generates
// exactly its own shard and every layout sees the same model. docs/model.md gives the
// exact recipe so that other implementations can regenerate the weights.

#include <cstdint>

#include <Kokkos_Macros.hpp>

#include "moeproxy/core/weight_source.hpp"

namespace moeproxy {

KOKKOS_INLINE_FUNCTION std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

KOKKOS_INLINE_FUNCTION std::uint64_t tensor_stream(std::uint64_t seed, TensorKind kind,
                                                   int layer, int expert) {
  std::uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<std::uint64_t>(kind));
  h = splitmix64(h ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(layer)));
  return splitmix64(h ^ static_cast<std::uint64_t>(static_cast<std::uint32_t>(expert)));
}

// Uniform in [-1, 1) with 24 random bits, so the value is exact in float32.
KOKKOS_INLINE_FUNCTION float uniform_at(std::uint64_t stream, std::uint64_t row,
                                        std::uint64_t col) {
  const std::uint64_t h = splitmix64(splitmix64(stream ^ row) ^ col);
  return static_cast<float>(static_cast<std::int64_t>(h >> 40) - (1ll << 23)) * (1.0f / (1 << 23));
}

// offset + scale * u rounded once to float32. The double sum is exact (24-bit factors,
// |offset| <= 1), so the value is the same whether or not a compiler fuses the multiply-add:
// the device, the host and a checkpoint written from either agree bit for bit.
KOKKOS_INLINE_FUNCTION float scaled_uniform(float u, float scale, float offset) {
  return static_cast<float>(static_cast<double>(offset) + static_cast<double>(scale) * static_cast<double>(u));
}

}  // namespace moeproxy
