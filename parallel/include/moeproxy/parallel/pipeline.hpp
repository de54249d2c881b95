#pragma once
// Pipeline parallelism: each stage holds consecutive layers; micro-batches of sequences
// flow stage to stage with send/recv on the run's backend (device_comm.hpp). The last stage applies the final norm and sends each
// sequence's newest row back to the first stage, where it is the next decode step's input
// (host rows over MPI: the first stage reads them on the host anyway).
// One stage and one micro-batch is the plain single-rank forward.

#include <functional>
#include <utility>
#include <vector>

#include "moeproxy/core/metrics.hpp"
#include "moeproxy/core/model.hpp"
#include "moeproxy/parallel/device_comm.hpp"

namespace moeproxy::parallel {

// Each sequence's newest row of a pass's final-normed rows [sequences * n, hidden], brought
// to the host: in prefill only those rows leave the device, not the whole prompt's.
class NewestRows {
 public:
  // Writes them to `dst` [sequences, hidden] on the host.
  void copy(const ConstMatrix& rows, int sequences, float* dst);

 private:
  Matrix packed_;  // kept across passes: an allocation on a GPU synchronises the device
};

class Pipeline {
 public:
  using MicroBatch = Transformer::MicroBatch;
  // Fills a micro-batch's input rows on the first stage.
  using Input = std::function<void(const MicroBatch&, const Matrix&)>;
  // Receives a micro-batch's final-normed rows on the last stage.
  using Output = std::function<void(const MicroBatch&, const Matrix&)>;

  // `stages`: the ranks holding the other layers of the same sequences, in stage order.
  Pipeline(Transformer& model, DeviceComm& stages, int sequences,
           int micro_batches, int layer_begin, int layer_end);

  // One pass over every micro-batch: the prompts (step < 0) or decode step `step`.
  // On the first stage, `feedback` [sequences, hidden] (host) receives each sequence's
  // last final-normed row, the input of the next decode step.
  void run(int step, const Input& input, const Output& output, std::vector<float>& feedback,
           PhaseTable& timing);

  // The micro-batches to run from now on (the failover drill changes them; failover.hpp).
  void serve(std::vector<MicroBatch> micro_batches) { micro_batches_ = std::move(micro_batches); }

  bool first_stage() const { return stages_.rank() == 0; }
  bool last_stage() const { return stages_.rank() == stages_.size() - 1; }
  const std::vector<MicroBatch>& micro_batches() const { return micro_batches_; }
  // Bytes of the buffer the stages' rows travel in (memory kind comm_buffers); with one stage
  // it holds only the micro-batch's own rows.
  std::uint64_t buffer_bytes() const { return stages_.size() > 1 ? buffer_.span() * sizeof(float) : 0; }

 private:
  Transformer& model_;
  DeviceComm& stages_;
  std::vector<MicroBatch> micro_batches_;
  int layer_begin_, layer_end_;
  Matrix buffer_;  // rows of the micro-batch in flight
  NewestRows newest_;
};

}  // namespace moeproxy::parallel
