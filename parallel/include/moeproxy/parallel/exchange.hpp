#pragma once
// The communicating side of a layer (core/exchange.hpp): tensor-parallel reductions
// (tensor_parallel.cpp), the score reductions of head x dim slicing (head_dim_parallel.cpp)
// and the experts' rows (expert_parallel.cpp), on the run's backend (device_comm.hpp):
// device buffers go to the DeviceComm as they are; only the expert counts travel over MPI.

#include <utility>
#include <vector>

#include "moeproxy/core/exchange.hpp"
#include "moeproxy/parallel/compression.hpp"
#include "moeproxy/core/placement.hpp"
#include "moeproxy/parallel/device_comm.hpp"
#include "moeproxy/parallel/expert_overlap.hpp"

namespace moeproxy::parallel {

class LayoutExchange : public LayerExchange {
 public:
  // `tp`: ranks sharing these tokens, holding other heads / FFN columns / experts (tp or m x n).
  // `ep`: ranks the experts are spread over with all-to-all.
  // `dim`: ranks holding the other dimension slices of the same heads (n of m x n).
  // `placement`: the experts of each rank of the expert group (ep, or with ep = 1 the sets of
  // an m x n group); this rank is its rank `placement_rank`.
  // `compression`: how the experts' rows travel over `ep` (compression.hpp).
  // `ep_chunks` > 1: the all-to-all-v overlapped with the experts (expert_overlap.hpp).
  LayoutExchange(DeviceComm& tp, DeviceComm& ep, DeviceComm& dim, ExpertPlacement placement, int placement_rank,
                 CommCompression compression, int ep_chunks = 1)
      : tp_(tp), ep_(ep), dim_(dim), placement_(std::move(placement)), placement_rank_(placement_rank),
        codec_(compression), ep_chunks_(ep_chunks), chunk_buffers_{expert_in_, expert_out_, {}, {}, {}} {}
  // A copy's chunk buffers would borrow the original's rows.
  LayoutExchange(const LayoutExchange&) = delete;
  LayoutExchange& operator=(const LayoutExchange&) = delete;

  void reduce_partial(const ExecSpace& space, const Matrix& partial) override;
  void reduce_scores(const ExecSpace& space, const Scores& scores) override;
  ExpertRows dispatch(const ExecSpace& space, int layer, const Matrix& xp, const std::vector<int>& counts) override;
  void undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp) override;
  void run_experts(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts, const Matrix& yp,
                   const ExpertCompute& compute, PhaseTable& timing, int layer) override;
  int expert_group_size() const override { return ep_.size(); }
  int partial_group_size() const override { return tp_.size(); }
  int score_group_size() const override { return dim_.size(); }
  std::uint64_t buffer_bytes() const override;

 private:
  DeviceComm& tp_;
  DeviceComm& ep_;
  DeviceComm& dim_;
  ExpertPlacement placement_;
  int placement_rank_;
  RowCodec codec_;
  int ep_chunks_;
  // Who sends whom how many rows in layer `layer`, from the expert group's all-to-all of counts.
  ExpertTraffic traffic(int layer, const std::vector<int>& counts);
  // The last dispatch's layout, in wire floats and in row floats (for the records), reused in
  // reverse by undispatch.
  std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_, row_send_counts_, row_recv_counts_;
  // Without an expert group: the rows of xp the local experts computed in place.
  std::pair<int, int> local_rows_{0, 0};
  // The rows other ranks sent this rank's experts (kept like LayerExchange::expert_out_),
  // and the buffers of the chunked exchange, which borrow both.
  Matrix expert_in_;
  ChunkBuffers chunk_buffers_;
};

}  // namespace moeproxy::parallel
