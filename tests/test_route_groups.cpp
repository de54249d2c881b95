// The rows each routing call sees under a layout (route_groups.hpp): what the host
// reference needs to reproduce a run's capacity drops.
#include <catch2/catch.hpp>

#include "moeproxy/parallel/layout.hpp"
#include "moeproxy/parallel/route_groups.hpp"

using namespace moeproxy;
using namespace moeproxy::parallel;

namespace {

RunConfig moe_run(int batch, int prompt) {
  RunConfig cfg;
  cfg.model.ffn = FfnKind::moe;
  cfg.model.experts = 8;
  cfg.model.top_k = 2;
  cfg.model.capacity_factor = 1.0;
  cfg.workload.batch = batch;
  cfg.workload.prompt = prompt;
  return cfg;
}

using Starts = std::vector<int>;

}  // namespace

TEST_CASE("route groups: one rank routes the whole batch in one call", "[route_groups]") {
  const RunConfig cfg = moe_run(16, 8);
  const RouteGroups g = route_groups(cfg, RankLayout::build(cfg, 1));
  CHECK(g.prefill == Starts{0});
  CHECK(g.decode == Starts{0});
}

TEST_CASE("route groups: data-parallel replicas and their micro-batches, whatever tp, pp and ep", "[route_groups]") {
  RunConfig cfg = moe_run(16, 8);
  cfg.parallel.dp = 2;
  cfg.parallel.ep = 2;
  cfg.parallel.tp = 2;
  cfg.parallel.pp = 2;
  cfg.parallel.micro_batches = 2;
  const RouteGroups g = route_groups(cfg, RankLayout::build(cfg, 8));
  CHECK(g.prefill == Starts{0, 32, 64, 96});
  CHECK(g.decode == Starts{0, 4, 8, 12});
}

TEST_CASE("route groups: separated attention ranks route their tensor-parallel share of the rows",
          "[route_groups]") {
  RunConfig cfg = moe_run(16, 7);
  cfg.parallel.attn_ranks = 3;
  cfg.parallel.tp = 3;
  const RouteGroups g = route_groups(cfg, RankLayout::build(cfg, 4));
  // 112 prompt rows in shares of 38, 37, 37 (across sequence boundaries); 16 rows of 6, 5, 5.
  CHECK(g.prefill == Starts{0, 38, 75});
  CHECK(g.decode == Starts{0, 6, 11});
  // No count of sequences below the batch ends a group in both phases.
  CHECK(whole_groups(g, cfg.workload, 2) == 16);
}

TEST_CASE("route groups: a sample grows to whole groups and keeps only theirs", "[route_groups]") {
  RunConfig cfg = moe_run(16, 8);
  cfg.parallel.attn_ranks = 4;
  cfg.parallel.dp = 4;
  cfg.parallel.micro_batches = 2;
  const RouteGroups all = route_groups(cfg, RankLayout::build(cfg, 8));
  CHECK(all.decode == Starts{0, 2, 4, 6, 8, 10, 12, 14});
  CHECK(whole_groups(all, cfg.workload, 1) == 2);
  CHECK(whole_groups(all, cfg.workload, 2) == 2);
  CHECK(whole_groups(all, cfg.workload, 5) == 6);
  const RouteGroups first = first_groups(all, cfg.workload, 6);
  CHECK(first.prefill == Starts{0, 16, 32});
  CHECK(first.decode == Starts{0, 2, 4});
}

TEST_CASE("route groups: the failover drill and balancing regroup during the run", "[route_groups]") {
  RunConfig cfg = moe_run(16, 8);
  CHECK(regrouping(cfg).empty());
  cfg.parallel.attn_replicas = 2;
  CHECK(regrouping(cfg).empty());
  cfg.faults.fail_rank = 1;
  CHECK_THAT(regrouping(cfg), Catch::Contains("faults.fail_rank"));
  cfg.faults.fail_rank = -1;
  cfg.parallel.balance_threshold = 0.05;
  CHECK_THAT(regrouping(cfg), Catch::Contains("parallel.balance_threshold"));
}
