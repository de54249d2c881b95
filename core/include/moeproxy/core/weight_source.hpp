#pragma once
// Where weight values come from: the counter-based hash (generated weights) or a checkpoint
// file (io/). A source hands out any block of a global (unsharded) tensor, so every rank
// asks for exactly its shard and every layout sees the same model. Plain C++ (no Kokkos):
// io/ implements it on the host compiler only.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"

namespace moeproxy {

// Tensor ids of docs/model.md's table; the hash mixes them into every value.
enum class TensorKind : std::uint32_t {
  input = 1,   // prefill hidden states [batch * prompt, hidden] (no vocabulary)
  norm1_gain,
  norm1_bias,
  wq,          // [hidden, heads * head_dim]
  wk,          // [hidden, kv_heads * head_dim]
  wv,
  wo,          // [heads * head_dim, hidden]
  norm2_gain,
  norm2_bias,
  router,      // [hidden, experts]
  w1,          // [hidden, ffn_hidden] (per expert for MoE)
  w3,          // [hidden, ffn_hidden] SwiGLU gate
  w2,          // [ffn_hidden, hidden]
  final_gain,
  final_bias,
  synthetic_routing,  // draws for workload.routing = uniform | zipf
};

// One weight tensor of the model: kind, layer (0 for the final norm) and expert (0 unless
// an MoE expert's w1/w2/w3).
struct TensorRef {
  TensorKind kind = TensorKind::wq;
  int layer = 0;
  int expert = 0;
};

// Indices [begin, begin + count) along one axis.
struct IndexSpan {
  std::int64_t begin = 0, count = 0;
};
// Spans in ascending order, disjoint: a block's rows (or columns) are their concatenation.
using IndexSpans = std::vector<IndexSpan>;
std::int64_t total_count(const IndexSpans& spans);

// A weight tensor as stored: [rows, cols] in docs/model.md's orientation (vectors are one
// row; dense w1/w2/w3 have no expert axis).
struct TensorShape {
  TensorRef ref;
  std::string name;  // dataset path in a checkpoint (docs/checkpoint.md)
  std::int64_t rows = 0, cols = 0;
  bool per_expert = false;  // an MoE expert tensor: stored as [experts, rows, cols]
  std::int64_t experts = 1;

  bool is_vector() const;  // norm gains and biases: stored as [cols]
  std::vector<std::int64_t> stored_dims() const;
};

// Every weight tensor the model of `cfg` reads, each expert tensor once (expert 0) with
// per_expert set. The order is the checkpoint's (layers in order, then the final norm).
std::vector<TensorShape> weight_tensors(const ModelConfig& cfg);
std::string tensor_name(TensorKind kind, int layer);

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // out[i * total_count(cols) + j] = tensor(rows[i], cols[j]), float32, row-major.
  virtual void read(const TensorRef& tensor, const IndexSpans& rows, const IndexSpans& cols,
                    float* out) const = 0;
  // What the weights are, for messages and reports.
  virtual std::string describe() const = 0;
  // The seed when the values are the hash's: the device then computes them in place rather
  // than passing every weight through a host buffer.
  virtual std::optional<std::uint64_t> generated_seed() const { return std::nullopt; }
};

}  // namespace moeproxy
