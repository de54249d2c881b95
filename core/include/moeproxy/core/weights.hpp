#pragma once
// Model weights: one layer's tensors as Kokkos Views, filled shard by shard from a
// WeightSource (weight_source.hpp): the counter-based hash (hash.hpp) or a checkpoint. A
// shard is described by the global rows/columns it covers, so the parallel strategies ask
// for exactly their slice and never build the whole model.

#include <cstdint>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/gemm.hpp"
#include "moeproxy/core/hash.hpp"
#include "moeproxy/core/placement.hpp"
#include "moeproxy/core/types.hpp"
#include "moeproxy/core/weight_source.hpp"

namespace moeproxy {

// Where local index i along one axis of a shard sits in the global tensor.
//   contiguous:  begin + i.
//   head-sliced: the axis is global heads x head_dim (wq's columns, wo's rows); locally it is
//     [heads, 2 * pairs]: local head h is global head begin + h and holds RoPE pairs
//     [pair_begin, pair_begin + pairs) of its (p, p + head_dim/2) pairs, the p's first, then
//     their partners, so that a slice rotates like a whole head of 2 * pairs dimensions.
struct AxisMap {
  std::int64_t begin = 0;
  int head_dim = 0;  // 0: contiguous
  int pair_begin = 0, pairs = 0;

  static AxisMap contiguous(std::int64_t begin) { return AxisMap{begin, 0, 0, 0}; }
  static AxisMap head_slice(int first_head, int head_dim, int pair_begin, int pairs) {
    return AxisMap{first_head, head_dim, pair_begin, pairs};
  }
  KOKKOS_INLINE_FUNCTION std::int64_t operator()(std::int64_t i) const {
    if (head_dim == 0) return begin + i;
    const std::int64_t width = 2 * pairs, h = i / width;
    const int j = static_cast<int>(i - h * width);
    const int dim = j < pairs ? pair_begin + j : head_dim / 2 + pair_begin + (j - pairs);
    return (begin + h) * head_dim + dim;
  }
};

// Generated tensors are offset + scale * uniform (docs/model.md's table).
struct GeneratedValue {
  float scale = 1.0f, offset = 0.0f;
};
GeneratedValue generated_value(const ModelConfig& cfg, TensorKind kind);

// The hash's weights through the WeightSource interface, evaluated on the host.
class GeneratedWeights : public WeightSource {
 public:
  explicit GeneratedWeights(const ModelConfig& cfg) : cfg_(cfg) {}
  void read(const TensorRef& tensor, const IndexSpans& rows, const IndexSpans& cols,
            float* out) const override;
  std::string describe() const override;
  std::optional<std::uint64_t> generated_seed() const override { return cfg_.seed; }

 private:
  ModelConfig cfg_;
};

// The global indices an AxisMap gives the first n local ones, as ascending spans.
IndexSpans spans_of(const AxisMap& axis, std::int64_t n);

// m(i, j) = offset + scale * uniform(rows(i), cols(j)) of tensor (kind, layer, expert).
void fill_tensor(const ExecSpace& space, const Matrix& m, std::uint64_t seed, TensorKind kind,
                 int layer, int expert, const AxisMap& rows, const AxisMap& cols, float scale,
                 float offset = 0.0f);
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
  int dim_begin = 0, dim_count = -1;         // RoPE pairs of every head held (AxisMap); -1 = all
  int expert_begin = 0, expert_count = -1;   // MoE experts; -1 = all
  int ffn_begin = 0, ffn_count = -1;         // columns of each FFN's hidden dimension; -1 = all
  int layer_begin = 0, layer_count = -1;     // pipeline stage's layers; -1 = all
  // An expert placement (placement.hpp) this shard is rank `placement_rank` of (-1: it holds
  // none, but routes by it): its experts of each layer. Empty: [expert_begin, expert_begin +
  // expert_count) of every layer.
  ExpertPlacement placement;
  int placement_rank = 0;

  // The global MoE experts held of layer `layer`, in the order they are stored.
  std::vector<int> experts_in(const ModelConfig& cfg, int layer) const;

  // Dimensions of each head held: the whole head, or 2 * dim_count (whole RoPE pairs).
  int head_dims(const ModelConfig& cfg) const {
    return dim_count < 0 ? cfg.effective_head_dim() : 2 * dim_count;
  }
  bool slices_dims() const { return dim_count >= 0; }
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

// The projections and experts are stored in the run's precision (binary16 for fp16 runs, the
// fp32 values generated here rounded to nearest even); norms and the router stay fp32.
struct LayerWeights {
  NormWeights attn_norm;
  StoredMatrix wq, wk, wv, wo;
  NormWeights ffn_norm;
  Matrix router;  // [hidden, experts], MoE only
  // Dense FFN: one "expert". MoE: the shard's experts, [local expert, in, out].
  StoredStack w1, w3, w2;
  std::vector<int> experts;  // global ids of the stacks' experts (dense: {0})

  std::uint64_t bytes() const;
};

struct ModelWeights {
  std::vector<LayerWeights> layers;
  NormWeights final_norm;
  std::uint64_t bytes() const;
};

// The weights of `shard` for layers [layer_begin, layer_end), from `source` (nullptr: the
// hash of cfg.seed).
ModelWeights make_weights(const ExecSpace& space, const ModelConfig& cfg, const ShardSpec& shard,
                          int layer_begin, int layer_end, const WeightSource* source = nullptr);

// Writes the prefill inputs of sequences [seq_begin, seq_begin + x.extent(0) / prompt)
// into x [sequences * prompt, hidden].
void fill_inputs(const ExecSpace& space, const ModelConfig& cfg, int seq_begin, int prompt, const Matrix& x);

}  // namespace moeproxy
