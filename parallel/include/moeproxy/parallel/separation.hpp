#pragma once
// Attention/MoE separation (layout.hpp): the attention ranks run every layer's attention
// and router, the FFN ranks its experts (or dense FFN columns); hidden rows go attention ->
// FFN -> attention every layer with non-blocking point-to-point messages on the "sep"
// communicator. Micro-batches ping-pong: the attention side runs layer-major over them, so
// that while the FFN ranks compute micro-batch i of layer l the attention ranks compute
// micro-batch i+1 of layer l, or micro-batch i of layer l+1 once its FFN rows are back.

#include <utility>
#include <vector>

#include "moeproxy/core/exchange.hpp"
#include "moeproxy/core/metrics.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/compression.hpp"
#include "moeproxy/parallel/layout.hpp"
#include "moeproxy/parallel/pipeline.hpp"

namespace moeproxy::parallel {

class Separation {
 public:
  using MicroBatch = Transformer::MicroBatch;
  // `sep` spans every rank, ranks numbered as in the world; `tp` is the attention rank's
  // tensor-parallel group (reduce_partial gathers the peers' shares of the FFN output).
  Separation(const ExecSpace& space, Transformer& model, Communicator& sep, LayerExchange& tp,
             const RankLayout& layout, const RunConfig& cfg);

  // One pass over every micro-batch and layer: the prompts (step < 0) or decode step `step`.
  // On attention ranks `input` fills each micro-batch's rows, `output` receives its
  // final-normed rows and `feedback` [sequences, hidden] each sequence's newest row; FFN
  // ranks serve the attention ranks' rows and call neither.
  void run(int step, const Pipeline::Input& input, const Pipeline::Output& output, std::vector<float>& feedback,
           PhaseTable& timing);
  // The micro-batches this attention rank runs, in ascending order (the failover drill
  // changes them; failover.hpp), and the attention ranks the FFN ranks serve (all of them
  // until set).
  void serve(std::vector<MicroBatch> micro_batches);
  void set_sources(std::vector<int> attention_ranks) { sources_ = std::move(attention_ranks); }

  // Between passes, on every rank alike: the attention ranks' sequences in `count`
  // micro-batches (parallel/balance.hpp re-splits decode).
  void split(int count);
  int micro_batches() const { return static_cast<int>(micro_batches_.size()); }
  // Bytes of the buffers rows travel between the two sides in (memory kind comm_buffers).
  std::uint64_t buffer_bytes() const;

 private:
  // One micro-batch's rows on their way to the FFN ranks and back (attention side).
  struct InFlight {
    Transformer::FfnInput in;
    StagingMatrix sent, received;        // host staging of wire rows, alive until the requests complete
    std::vector<std::vector<int>> counts;  // per FFN rank: its experts' row counts (dense: {rows})
    std::vector<MPI_Request> requests;
  };
  void run_attention(int step, const Pipeline::Input& input, const Pipeline::Output& output,
                     std::vector<float>& feedback, PhaseTable& timing);
  void run_ffn(PhaseTable& timing);
  void send(int l, InFlight& f, PhaseTable& timing);
  void finish(int l, const Matrix& x, InFlight& f, PhaseTable& timing);
  // The rows of a micro-batch's `rows` this rank routes: its tensor-parallel share.
  std::pair<int, int> share(int rows) const;

  ExecSpace space_;
  Transformer& model_;
  Communicator& sep_;
  LayerExchange& tp_;
  RunConfig cfg_;
  int attn_ranks_, ffn_ranks_;
  ExpertPlacement placement_;    // MoE: each FFN rank's experts per layer (empty: dense)
  int tp_index_, tp_size_;       // attention side: place in the tensor-parallel group
  int sequences_;                // attention side: this rank's sequences
  std::vector<MicroBatch> micro_batches_;
  std::vector<int> sources_;     // FFN side: the attention ranks sending rows
  std::vector<InFlight> flights_;
  Matrix x_, y_, partial_;       // attention: the slice's rows, FFN outputs, FFN sum; FFN: rows in, out
  StagingMatrix in_host_, out_host_;  // FFN side staging of wire rows
  RowCodec codec_;                 // how rows travel (compression.hpp)
  std::vector<MPI_Request> out_requests_;
  NewestRows newest_;              // attention side: the next decode step's inputs
};

}  // namespace moeproxy::parallel
