#pragma once
// Model weights: one layer's tensors as Kokkos Views, generated shard by shard from the
// counter-based hash (hash.hpp). A shard is described by the global rows/columns it covers,
// so the parallel strategies ask for exactly their slice and never build the whole model.

#include <cstdint>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/hash.hpp"
#include "moeproxy/core/types.hpp"

namespace moeproxy {

// m(i, j) = offset + scale * uniform(row0 + i, col0 + j) of tensor (kind, layer, expert).
void fill_tensor(const ExecSpace& space, const Matrix& m, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, std::int64_t row0, std::int64_t col0, float scale,
                 float offset = 0.0f);
// v(j) = offset + scale * uniform(0, col0 + j).
void fill_tensor(const ExecSpace& space, const Vector& v, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, std::int64_t col0, float scale, float offset = 0.0f);

// The slice of the model one rank holds. Defaults: everything (the single-rank model).
struct ShardSpec {
  int head_begin = 0, head_count = -1;       // query heads; -1 = all
  int expert_begin = 0, expert_count = -1;   // MoE experts; -1 = all
  int ffn_begin = 0, ffn_count = -1;         // columns of each FFN's hidden dimension; -1 = all
  int layer_begin = 0, layer_count = -1;     // pipeline stage's layers; -1 = all
};

// The kv heads a run of query heads reads: [begin, begin + count). With grouped kv heads a
// shard whose query heads straddle two groups holds both kv heads (replicated across ranks,
// as Megatron does when tp exceeds the kv heads).
struct KvRange {
  int begin = 0, count = 0;
};
KvRange kv_heads_of(const ModelConfig& cfg, int head_begin, int head_count);

struct NormWeights {
  Vector gain;
  Vector bias;  // LayerNorm only; empty for RMSNorm
};

struct LayerWeights {
  NormWeights attn_norm;
  Matrix wq, wk, wv, wo;
  NormWeights ffn_norm;
  Matrix router;  // [hidden, experts], MoE only
  // Dense FFN: one "expert". MoE: the shard's experts, [local expert, in, out].
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> w1, w3, w2;
  int expert_begin = 0;

  std::uint64_t bytes() const;
};

struct ModelWeights {
  std::vector<LayerWeights> layers;
  NormWeights final_norm;
  std::uint64_t bytes() const;
};

// Generates the weights of `shard` for layers [layer_begin, layer_end).
ModelWeights make_weights(const ExecSpace& space, const ModelConfig& cfg, const ShardSpec& shard,
                          int layer_begin, int layer_end);

// Prefill inputs of sequences [seq_begin, seq_begin + count): [count * prompt, hidden].
Matrix make_inputs(const ExecSpace& space, const ModelConfig& cfg, int seq_begin, int count,
                   int prompt);

}  // namespace moeproxy
