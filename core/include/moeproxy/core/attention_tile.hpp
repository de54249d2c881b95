#pragma once
// The tile of the prefill attention kernel (flash_attention.cpp), pure so that the
// performance model counts the work of each team as the kernel divides it.

#include <algorithm>

namespace moeproxy {

// Queries (and keys) per tile for heads of `head_dim`: four [tile, head_dim] fp32 tiles
// (Q, O, K, V) in 32 KiB, within the 48 KiB of shared memory a CUDA block gets without
// opting in, at 16 x 128 or 4 x 512.
inline int attention_tile(int head_dim) { return std::max(1, std::min(32, 2048 / std::max(1, head_dim))); }

}  // namespace moeproxy
