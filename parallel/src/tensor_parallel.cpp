// Tensor parallelism (Megatron): QKV and W1/W3 are column-parallel, the attention output
// projection and W2 row-parallel, so each rank of the tensor-parallel group ends a block
// with a partial sum of the same [T, d] rows; one all-reduce makes it whole.
#include "moeproxy/parallel/exchange.hpp"

namespace moeproxy::parallel {

void LayoutExchange::reduce_partial(const ExecSpace& space, const Matrix& partial) {
  if (tp_.size() == 1) return;
  (void)space;  // the DeviceComm runs on the same execution space
  tp_.allreduce_sum(partial.data(), partial.span());
}

}  // namespace moeproxy::parallel
