#pragma once
// Which rows each routing call of a run sees. A capacity factor keeps at most
// ceil(c * T * k / E) slots per expert of the T rows in one call (docs/model.md, Capacity),
// so which tokens are dropped depends on the rows routed together: the host reference
// reproduces a run's drops only when it routes the same groups.
//
// Every call covers consecutive rows of the batch, in prefill the rows b * prompt + i of
// some sequences, in decode one row per sequence:
// - each data-parallel replica routes its own sequences in parallel.micro_batches equal
//   micro-batches; pipeline stages route the same micro-batches in their own layers;
// - tensor-parallel and m x n peers route the same rows (the same drops); expert
//   parallelism routes a rank's own rows before they are dispatched (whole or in
//   parallel.ep_chunks pieces);
// - with separation each of a replica's tp attention ranks routes a contiguous share of a
//   micro-batch's rows (tensor_share), in prefill not always whole sequences;
// - attention replicas without the drill serve their own sequences, grouped as above.
// The grouping changes during the run with the failover drill (the buddy runs the failed
// replica's sequences with its own) and with balancing (decode micro-batches re-split by
// measured times): regrouping() says so.

#include <string>
#include <utility>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/reference.hpp"
#include "moeproxy/parallel/layout.hpp"

namespace moeproxy::parallel {

// Rows [first, second) of `rows` that tensor-parallel index `index` of `size` routes under
// separation: the first rows % size indices take one more.
std::pair<int, int> tensor_share(int rows, int index, int size);

// Why the run's grouping changes while it runs; "" when the groups are fixed.
std::string regrouping(const RunConfig& cfg);

// The groups of the whole batch, starts counted in global rows (prefill b * prompt + i,
// decode b). Meaningful when regrouping(cfg) is "".
RouteGroups route_groups(const RunConfig& cfg, const RankLayout& layout);

// The smallest count >= `sequences` whose sequences [0, count) are whole groups in prefill
// and decode alike (at most the batch, which always is).
int whole_groups(const RouteGroups& groups, const WorkloadConfig& workload, int sequences);

// The groups of sequences [0, count), count from whole_groups.
RouteGroups first_groups(const RouteGroups& groups, const WorkloadConfig& workload, int count);

}  // namespace moeproxy::parallel
