#pragma once
// The single-rank forward pass: prefill over whole prompts, then decode steps with a KV
// cache. Each phase is timed fence-to-fence into a PhaseTable (metrics.hpp).
//
// A Transformer runs `batch` sequences whose global indices start at `seq_begin`, so that a
// data-parallel replica generates the same inputs (and synthetic routing draws) as the
// matching rows of a single-rank run.

#include <cstdint>
#include <utility>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/exchange.hpp"
#include "moeproxy/core/kernels.hpp"
#include "moeproxy/core/metrics.hpp"
#include "moeproxy/core/perf_model.hpp"  // forward_flops
#include "moeproxy/core/types.hpp"
#include "moeproxy/core/weights.hpp"

namespace moeproxy {

struct SequenceSlice {
  int begin = 0;         // global index of the first sequence
  int count = 1;         // sequences here
  int global_batch = 1;  // sequences in the whole run
};

// Runs `work` and charges its time, fence to fence, to (layer, phase) of `table`.
template <class Work>
void timed(const ExecSpace& space, PhaseTable& table, int layer, Phase phase, Work&& work) {
  Kokkos::Timer timer;
  work();
  named_fence(space, "moeproxy::phase_end");
  table.add(layer, phase, timer.seconds());
}

// The slice of the model a Transformer holds: heads, FFN columns and experts of every
// layer (ShardSpec), with `exchange` joining it to the ranks holding the rest, its values
// from `weights` (nullptr: generated from the seed). The defaults hold the whole model.
class Transformer {
 public:
  Transformer(const ExecSpace& space, const ModelConfig& model, const WorkloadConfig& workload,
              const SequenceSlice& slice, const ShardSpec& shard = ShardSpec{},
              LayerExchange* exchange = nullptr, const WeightSource* weights = nullptr);

  // Sequences [first, first + count) of this rank's slice, run together.
  struct MicroBatch {
    int first = 0, count = 0;
  };

  // Writes a micro-batch's prefill inputs into x [count * prompt, hidden].
  void fill_inputs(const MicroBatch& mb, const Matrix& x) const;
  // Runs the layers held here in place on x, the micro-batch's rows: its prompts
  // (step < 0, [count * prompt, hidden]) or decode step `step` ([count, hidden]).
  void run_layers(const Matrix& x, const MicroBatch& mb, int step, PhaseTable& timing);
  // The final norm of x's rows; the result stays valid until the next call.
  Matrix final_norm(const ConstMatrix& x, PhaseTable& timing);

  // The whole slice through every layer (a rank holding all layers): prefill returns the
  // final-normed hidden states [count * prompt, hidden]; a decode step takes the previous
  // outputs x [count, hidden] (the last prompt position's for step 0) and returns its own.
  Matrix prefill(PhaseTable& timing);
  Matrix decode_step(const ConstMatrix& x, int step, PhaseTable& timing);
  MicroBatch all_sequences() const { return MicroBatch{0, slice_.count}; }
  int prompt() const { return workload_.prompt; }
  int hidden() const { return cfg_.hidden; }

  // A layer split where its FFN begins, so that other ranks can run the FFN in between
  // (attention/MoE separation, parallel/src/separation.cpp). What the first half hands over:
  // MoE: the routed rows grouped by global expert, counts[e] rows of expert e, and what
  // combining their outputs needs; dense: the normed rows, counts = {rows}. Buffers are
  // reused by the next call with the same FfnInput.
  struct FfnInput {
    Matrix rows;              // [kept, hidden] (MoE) or [T, hidden] (dense)
    std::vector<int> counts;  // per global expert (MoE) or {T} (dense)
    Permutation perm;         // MoE: where each (token, slot) went in rows
    Matrix route_w;           // MoE: [T, top_k] router weights
    Matrix rows_buffer, route_w_buffer;  // rows and route_w are their front rows
  };
  // Layer l's attention and residual add on x, micro-batch mb's rows (step as in
  // run_layers), then the FFN's input of x's rows [share.first, share.second) into `in`
  // (tensor-parallel peers hold the same rows and hand over a share each).
  void attention_half(int l, const Matrix& x, const MicroBatch& mb, int step, std::pair<int, int> share,
                      FfnInput& in, PhaseTable& timing);
  // The FFN held here on rows of x, `counts[b]` rows per block (the experts' rows of this
  // rank's own MoE step, or rows another rank's attention_half produced): MoE block b goes
  // to local expert b % (experts held); dense blocks all go through this rank's FFN
  // columns, a partial sum. Writes y [rows, hidden]; x's rows are scratch after the call
  // (an expert's rows from several sources are gathered and computed there).
  void ffn_rows(int l, const Matrix& x, const std::vector<int>& counts, const Matrix& y, PhaseTable& timing);

  // Kept tokens per [layer, expert] during prefill (empty for dense models).
  const std::vector<std::uint64_t>& expert_tokens() const { return expert_tokens_; }
  std::uint64_t dropped_slots() const { return dropped_; }
  // Back to no tokens counted or dropped: the warm-up passes' are not the run's.
  void reset_statistics();
  std::uint64_t weight_bytes() const { return weights_.bytes(); }
  std::uint64_t kv_cache_bytes() const;
  std::uint64_t activation_bytes() const;

 private:
  struct Workspace {
    Matrix x, h, q, k, v, attn, partial, ffn_a, ffn_b, logits, route_w, xp, yp, out;
    IndexMatrix route_idx;
    // ffn_rows' gather of each expert's rows (the first half) and back (the second), one
    // transfer from their host staging (the same view on a host build).
    IndexVector expert_rows;
    StagingIndexVector expert_rows_host;
    Vector scores;  // backs the Scores of sliced-dimension attention, sized for any call
  };
  void layer(int l, const Matrix& x, const MicroBatch& mb, int n, int pos0, std::int64_t token0,
             PhaseTable& timing, bool count_experts);
  // Attention with its residual add on x; returns the FFN input ffn_norm(x).
  Matrix attention_block(int l, const Matrix& x, const MicroBatch& mb, int n, int pos0, PhaseTable& timing);
  // Routes h and gathers its rows by expert into xp; returns how many were kept.
  int route(int l, const Matrix& h, std::int64_t token0, PhaseTable& timing, bool count_experts,
            const Matrix& route_w, Permutation& perm, std::vector<int>& counts, const Matrix& xp);
  // Global token id of the first row of micro-batch mb at `step` (docs/model.md).
  std::int64_t first_token(const MicroBatch& mb, int step) const;
  // Stores the layer's keys and values and attends; T is the cache's storage (float, Half).
  template <class T>
  void attend(int l, const Workspace& w, const MicroBatch& mb, const CacheOf<T>& k_layer,
              const CacheOf<T>& v_layer, int n, int pos0, PhaseTable& timing);
  void moe(int l, const Matrix& x, const Matrix& h, std::int64_t token0, PhaseTable& timing,
           bool count_experts);
  void dense_ffn(int l, const Matrix& x, const Matrix& h, PhaseTable& timing);
  Workspace rows(int tokens) const;
  // The FFN of each group's rows of x through the group's local expert, into y's rows.
  void expert_ffn(const LayerWeights& lw, const std::vector<GemmGroup>& groups, const Matrix& x,
                  const Matrix& a, const Matrix& b, const Matrix& y);
  // Grows the expert buffers when expert parallelism brings more rows than were routed here.
  void reserve_expert_rows(int rows);

  ExecSpace space_;
  ModelConfig cfg_;
  WorkloadConfig workload_;
  SequenceSlice slice_;
  int head_begin_ = 0, heads_ = 0, kv_heads_ = 0, ffn_ = 0;  // held here
  int pair_begin_ = 0, pairs_ = -1;  // RoPE pairs of each head held (ShardSpec); -1 = all
  int head_dims_ = 0;                // dimensions of each head held
  int layer_begin_ = 0, layer_end_ = 0;
  LayerExchange default_exchange_;
  LayerExchange* exchange_;
  ModelWeights weights_;
  // Per layer held, in the run's storage precision: fp32 runs fill the first pair, fp16 the second.
  std::vector<Cache> k_cache_, v_cache_;
  std::vector<HalfCache> k_half_, v_half_;
  RopeTable rope_;  // of every position and the pairs held, with cfg_.rope
  Workspace ws_;
  GemmScratch gemm_scratch_;  // the binary16 GEMMs' copies (gemm.hpp), kept from call to call
  Permutation perm_;  // moe()'s, its storage kept from layer to layer
  RoutingCdf routing_cdf_;  // synthetic routing's, made once
  // With an expert placement not in id order (placement.hpp): [layer, expert] -> position in
  // the layer's placement order, and per layer the experts in that order; empty otherwise.
  IndexMatrix expert_position_;
  std::vector<std::vector<int>> expert_order_;
  std::vector<std::uint64_t> expert_tokens_;
  std::uint64_t dropped_ = 0;
};


}  // namespace moeproxy

namespace moeproxy {

// Bytes a Transformer over `sequences` local sequences holding `shard` allocates, per
// memory kind, computed from the shapes alone (for `moeproxy check` and the pre-flight
// before any allocation). Expert parallelism may add rows at run time (tokens routed here
// by other ranks); this counts the rows routed by this rank's own tokens. A shard holding a
// slice of each head's dimensions also holds the whole attention scores of its heads.
struct MemoryEstimate {
  std::uint64_t weights = 0, kv_cache = 0, activations = 0;
  std::uint64_t total() const { return weights + kv_cache + activations; }
};
MemoryEstimate estimate_memory(const ModelConfig& model, const WorkloadConfig& workload, int sequences,
                               const ShardSpec& shard = ShardSpec{});

}  // namespace moeproxy
