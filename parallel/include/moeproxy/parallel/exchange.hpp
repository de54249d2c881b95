#pragma once
// The MPI side of a layer (core/exchange.hpp): tensor-parallel reductions
// (tensor_parallel.cpp) and expert-parallel token dispatch (expert_parallel.cpp).
// Buffers are staged through host memory after a named fence unless the data already
// lives there (no CUDA-aware MPI assumed).

#include <vector>

#include "moeproxy/core/exchange.hpp"
#include "moeproxy/parallel/comm.hpp"

namespace moeproxy::parallel {

class LayoutExchange : public LayerExchange {
 public:
  // `tp`: ranks sharing these tokens, holding other heads / FFN columns.
  // `ep`: ranks the experts are spread over, `local_experts` each.
  LayoutExchange(Communicator& tp, Communicator& ep, int local_experts)
      : tp_(tp), ep_(ep), local_experts_(local_experts) {}

  void reduce_partial(const ExecSpace& space, const Matrix& partial) override;
  Matrix dispatch(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                  std::vector<int>& counts_in) override;
  void undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp) override;
  int expert_group_size() const override { return ep_.size(); }

 private:
  Communicator& tp_;
  Communicator& ep_;
  int local_experts_;
  // The last dispatch's layout, in floats, reused in reverse by undispatch.
  std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_;
};

}  // namespace moeproxy::parallel
