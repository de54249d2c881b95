#pragma once
// Where one layer's data meets other ranks. The forward pass calls these at fixed points;
// parallel/ implements them with MPI for its layouts. The defaults are what a rank holding
// the whole model does: nothing to reduce, every expert local. core/ knows nothing of MPI.

#include <vector>

#include "moeproxy/core/types.hpp"

namespace moeproxy {

class LayerExchange {
 public:
  virtual ~LayerExchange() = default;

  // Sums `partial` [T, d] in place over the ranks that hold other slices of the same
  // tokens' weights (tensor parallelism: row-parallel output projections).
  virtual void reduce_partial(const ExecSpace& space, const Matrix& partial);

  // Expert parallelism. `xp` holds the routed rows grouped by global expert, `counts[e]`
  // rows of expert e. Each rank of the expert group gets the rows of the experts it holds.
  // Returns the rows this rank must compute, grouped by source rank then local expert,
  // with counts_in[src * local_experts + e] rows each.
  virtual Matrix dispatch(const ExecSpace& space, const Matrix& xp, const std::vector<int>& counts,
                          std::vector<int>& counts_in);
  // Sends the expert outputs `y_in` (laid out as dispatch returned) back to the ranks the
  // rows came from; `yp` receives this rank's rows in xp's order.
  virtual void undispatch(const ExecSpace& space, const Matrix& y_in, const Matrix& yp);
  // Ranks the experts are spread over (1: all local).
  virtual int expert_group_size() const { return 1; }
};

}  // namespace moeproxy
