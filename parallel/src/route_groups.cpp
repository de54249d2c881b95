#include "moeproxy/parallel/route_groups.hpp"

#include <algorithm>

namespace moeproxy::parallel {

std::pair<int, int> tensor_share(int rows, int index, int size) {
  const int per = rows / size, extra = rows % size;
  const int begin = index * per + std::min(index, extra);
  return {begin, begin + per + (index < extra ? 1 : 0)};
}

std::string regrouping(const RunConfig& cfg) {
  if (cfg.faults.drill())
    return "the failover drill (faults.fail_rank) moves the failed replica's sequences into its buddy's micro-batches";
  if (cfg.parallel.balance_threshold > 0.0)
    return "balancing (parallel.balance_threshold > 0) re-splits the decode micro-batches by measured times";
  return "";
}

RouteGroups route_groups(const RunConfig& cfg, const RankLayout& layout) {
  const WorkloadConfig& w = cfg.workload;
  const ParallelConfig& p = cfg.parallel;
  const int per_replica = w.batch / p.dp, per_micro = per_replica / p.micro_batches;
  // Separation: every attention rank of a replica routes its share; otherwise the tensor
  // group routes the micro-batch's rows together.
  const int shares = layout.separated() ? p.tp : 1;
  RouteGroups g;
  for (int first = 0; first < w.batch; first += per_micro)
    for (int s = 0; s < shares; ++s) {
      const int prefill = tensor_share(per_micro * w.prompt, s, shares).first;
      const int decode = tensor_share(per_micro, s, shares).first;
      // An empty share (fewer rows than tp ranks) routes nothing: no group.
      if (g.prefill.empty() || g.prefill.back() != first * w.prompt + prefill)
        g.prefill.push_back(first * w.prompt + prefill);
      if (g.decode.empty() || g.decode.back() != first + decode) g.decode.push_back(first + decode);
    }
  return g;
}

namespace {

bool starts_group(const std::vector<int>& starts, int row) {
  return std::binary_search(starts.begin(), starts.end(), row);
}

std::vector<int> below(const std::vector<int>& starts, int rows) {
  return std::vector<int>(starts.begin(), std::lower_bound(starts.begin(), starts.end(), rows));
}

}  // namespace

int whole_groups(const RouteGroups& groups, const WorkloadConfig& workload, int sequences) {
  int count = std::max(sequences, 1);
  while (count < workload.batch &&
         !(starts_group(groups.prefill, count * workload.prompt) && starts_group(groups.decode, count)))
    ++count;
  return std::min(count, workload.batch);
}

RouteGroups first_groups(const RouteGroups& groups, const WorkloadConfig& workload, int count) {
  return RouteGroups{below(groups.prefill, count * workload.prompt), below(groups.decode, count)};
}

}  // namespace moeproxy::parallel
