// Head x dim slicing (m x n): each rank holds a slice of whole RoPE pairs of every one of its
// heads, so its q.k is a partial score. The n ranks holding the other slices of the same
// heads sum the scores [T, heads, context] before the softmax; after it, each weighs its
// own V columns and the group's row-parallel output projection (reduce_partial over the
// m x n ranks) completes the attention. The FFN reuses the group's reduce_partial, and the
// experts' rows the tokens-replicated branch of dispatch (expert_parallel.cpp).
#include "moeproxy/parallel/exchange.hpp"

namespace moeproxy::parallel {

void LayoutExchange::reduce_scores(const ExecSpace& space, const Scores& scores) {
  if (dim_.size() == 1) return;
  (void)space;  // the DeviceComm runs on the same execution space
  dim_.allreduce_sum(scores.data(), scores.span());
}

}  // namespace moeproxy::parallel
