#pragma once
// How the attention kernels (kernels.cpp, flash_attention.cpp) divide their outputs among a
// team's threads.

#include "moeproxy/core/types.hpp"

namespace moeproxy {

// Adjacent outputs (scores of adjacent keys, adjacent dimensions of an output row) one
// thread computes together. On a GPU a thread per output keeps the team's threads busy. On a
// CPU a team is one thread: one output at a time is one serial chain of dependent additions
// (decode attention ran at 2.4 GFLOP/s on a core whose GEMMs run at 170, 2026-12-06); eight
// at a time are eight independent sums the compiler keeps in vector registers.
constexpr int attention_block = kernels_on_host ? 8 : 1;

KOKKOS_INLINE_FUNCTION int blocks_of(int n) { return (n + attention_block - 1) / attention_block; }
KOKKOS_INLINE_FUNCTION int padded_to_blocks(int n) { return blocks_of(n) * attention_block; }

// A block's width as a compile-time constant (std::integral_constant's conversion is
// host-only under nvcc).
template <int N>
struct BlockWidth {
  KOKKOS_INLINE_FUNCTION constexpr operator int() const { return N; }
};

// body(width) for a block of 1 <= width <= attention_block outputs, width always a
// compile-time constant, so that the loops over the block unroll and vectorise. The last block
// of a context or of a head is seldom full: with its width known only at run time, a decode
// step's team took a third longer for 17 keys than for 16 (2026-12-06).
template <int N = attention_block, class Body>
KOKKOS_FORCEINLINE_FUNCTION void over_block(int width, const Body& body) {
  if constexpr (N > 1) {
    if (width < N) return over_block<N - 1>(width, body);
  }
  body(BlockWidth<N>{});
}

}  // namespace moeproxy
