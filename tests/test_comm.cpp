// The recorded MPI communicator and the layout checks, on every rank count CTest uses.
#include <catch2/catch.hpp>

#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/layout.hpp"

using namespace moeproxy;
using namespace moeproxy::parallel;

namespace {
const CommRecord& record(const std::vector<CommRecord>& rs, const std::string& op) {
  for (const auto& r : rs)
    if (r.operation == op) return r;
  FAIL("no record for " << op);
  return rs.front();
}
}  // namespace

TEST_CASE("comm: reductions, gather and point-to-point give the right values", "[comm]") {
  Communicator world(MPI_COMM_WORLD, "world");
  const int n = world.size(), r = world.rank();
  double v[2] = {double(r), 1.0};
  world.allreduce_sum(v, 2);
  CHECK(v[0] == n * (n - 1) / 2.0);
  CHECK(v[1] == n);
  double mx = r, mn = r;
  world.allreduce_max(&mx, 1);
  world.allreduce_min(&mn, 1);
  CHECK(mx == n - 1);
  CHECK(mn == 0);
  std::uint64_t u = 1ull << 40;
  world.allreduce_sum(&u, 1);
  CHECK(u == static_cast<std::uint64_t>(n) << 40);
  const std::vector<double> all = world.gather({double(r), double(10 * r)}, 0);
  if (r == 0) {
    REQUIRE(all.size() == static_cast<std::size_t>(2 * n));
    for (int i = 0; i < n; ++i) CHECK(all[2 * i + 1] == 10.0 * i);
  }
  if (n > 1) {
    float msg[3] = {1.5f, 2.5f, float(r)};
    if (r == 1) world.send(msg, 3, 0, 7);
    if (r == 0) {
      world.recv(msg, 3, 1, 7);
      CHECK(msg[2] == 1.0f);
    }
  }
}

TEST_CASE("comm: records count calls and bus bytes, self-traffic excluded", "[comm]") {
  Communicator world(MPI_COMM_WORLD, "world");
  const int n = world.size();
  std::vector<double> buf(1000, 1.0);
  world.allreduce_sum(buf.data(), 1000);
  world.allreduce_sum(buf.data(), 1000);
  world.barrier();
  const auto rs = world.records();
  const CommRecord& ar = record(rs, "allreduce");
  CHECK(ar.calls == 2);
  CHECK(ar.group == "world");
  CHECK(ar.group_size == n);
  CHECK(ar.bytes == static_cast<std::uint64_t>(2 * (2.0 * (n - 1) / n * 8000)));
  CHECK(ar.seconds >= 0.0);
  CHECK(record(rs, "barrier").calls == 1);
}

TEST_CASE("layout: dp must match the ranks and divide the batch, with a helpful message", "[layout]") {
  RunConfig cfg;
  cfg.workload.batch = 8;
  cfg.parallel.dp = 4;
  CHECK_NOTHROW(RankLayout::build(cfg, 4));
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.dp=4") && Catch::Contains("mpiexec -n 4"));
  cfg.workload.batch = 6;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("workload.batch=6"));
  cfg.workload.batch = 8;
  cfg.parallel.tp = 2;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.tp=2"));
}

TEST_CASE("layout: sequences are split evenly and every one has an owner", "[layout]") {
  RunConfig cfg;
  cfg.workload.batch = 12;
  cfg.parallel.dp = 3;
  const RankLayout layout = RankLayout::build(cfg, 3);
  int next = 0;
  for (int r = 0; r < 3; ++r) {
    const SequenceSlice s = layout.sequences_of(r);
    CHECK(s.begin == next);
    CHECK(s.count == 4);
    CHECK(s.global_batch == 12);
    for (int q = s.begin; q < s.begin + s.count; ++q) CHECK(layout.owner_of_sequence(q) == r);
    next += s.count;
  }
  CHECK(next == 12);
  CHECK(layout.describe() == "dp=3");
}

TEST_CASE("layout: head x dim slicing splits heads, pairs and experts inside each m x n group", "[layout]") {
  RunConfig cfg;  // 4 heads of 16 dimensions (8 RoPE pairs), 4 experts
  cfg.workload.batch = 4;
  cfg.model.head_dim = 16;
  cfg.parallel.dp = 2;
  cfg.parallel.head_groups = 2;
  cfg.parallel.dim_groups = 2;
  const RankLayout layout = RankLayout::build(cfg, 8);
  CHECK(layout.describe() == "dp=2 mxn=2x2");
  for (int r = 0; r < 8; ++r) {
    const Coordinates c = layout.coordinates(r);
    const ShardSpec s = layout.shard_of(r);
    CHECK(c.dp == r / 4);
    CHECK(c.head == r % 4 / 2);
    CHECK(c.dim == r % 2);
    CHECK(s.head_begin == 2 * c.head);
    CHECK(s.head_count == 2);
    CHECK(s.dim_begin == 4 * c.dim);
    CHECK(s.dim_count == 4);
    CHECK(s.expert_begin == r % 4);  // 4 experts on 4 ranks: whole experts, no column split
    CHECK(s.expert_count == 1);
    CHECK(s.ffn_count == cfg.model.ffn_hidden);
    CHECK(layout.tp_group(r) == r / 4);
    CHECK(layout.dim_group(r) == r / 2);
    CHECK(layout.owns_outputs(r) == (r % 4 == 0));
  }
  CHECK(layout.owner_of_sequence(3) == 4);
  CHECK_THAT(layout.rank_map(), Catch::Contains("heads 2-3 (dims 4-7,12-15 of 16)"));

  cfg.model.experts = 2;  // 2 experts on 4 ranks: each expert's columns split in two
  for (int r = 0; r < 4; ++r) {
    const ShardSpec s = RankLayout::build(cfg, 8).shard_of(r);
    CHECK(s.expert_begin == r / 2);
    CHECK(s.expert_count == 1);
    CHECK(s.ffn_begin == r % 2 * cfg.model.ffn_hidden / 2);
    CHECK(s.ffn_count == cfg.model.ffn_hidden / 2);
  }
}

TEST_CASE("layout: head x dim slicing refuses what it cannot run, naming the keys", "[layout]") {
  RunConfig cfg;
  cfg.model.head_dim = 12;     // 6 RoPE pairs
  cfg.model.ffn_hidden = 120;  // divisible by the column splits below
  cfg.parallel.dim_groups = 4;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.dim_groups=4") &&
                                                   Catch::Contains("model.head_dim=12") && Catch::Contains("6"));
  cfg.parallel.dim_groups = 3;
  CHECK_NOTHROW(RankLayout::build(cfg, 3));
  CHECK_THROWS_WITH(RankLayout::build(cfg, 6), Catch::Contains("mpiexec -n 3"));
  cfg.parallel.dim_groups = 1;
  cfg.parallel.head_groups = 3;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 3), Catch::Contains("parallel.head_groups=3") && Catch::Contains("model.heads=4"));
  cfg.parallel.head_groups = 2;
  cfg.parallel.tp = 2;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.tp=2") && Catch::Contains("parallel.tp = 1"));
  cfg.parallel.tp = 1;
  cfg.parallel.dp = 2;
  cfg.parallel.ep = 2;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.ep=2") && Catch::Contains("parallel.ep = 1"));
  cfg.parallel.ep = 1;
  cfg.model.ffn = FfnKind::dense;
  cfg.model.ffn_hidden = 127;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("model.ffn_hidden=127"));
}

TEST_CASE("layout: separation puts attention first and splits the experts over the other ranks", "[layout]") {
  RunConfig cfg;  // 4 heads, 4 experts, batch 4
  cfg.parallel.attn_ranks = 4;
  cfg.parallel.dp = 2;
  cfg.parallel.tp = 2;
  const RankLayout layout = RankLayout::build(cfg, 6);
  CHECK(layout.separated());
  CHECK(layout.ffn_ranks() == 2);
  CHECK(layout.describe() == "dp=2 tp=2 attn_ranks=4 ep=2");
  for (int r = 0; r < 4; ++r) {
    const ShardSpec s = layout.shard_of(r);
    CHECK_FALSE(layout.ffn_rank(r));
    CHECK(s.head_begin == 2 * (r % 2));
    CHECK(s.head_count == 2);
    CHECK(s.expert_count == 0);
    CHECK(s.ffn_count == 0);
    CHECK(layout.sequences_of(r).begin == 2 * (r / 2));
    CHECK(layout.owns_outputs(r) == (r % 2 == 0));
  }
  for (int r = 4; r < 6; ++r) {
    const ShardSpec s = layout.shard_of(r);
    CHECK(layout.ffn_rank(r));
    CHECK(s.head_count == 0);
    CHECK(s.expert_begin == 2 * (r - 4));
    CHECK(s.expert_count == 2);
    CHECK(layout.sequences_of(r).count == 0);
    CHECK_FALSE(layout.owns_outputs(r));
    CHECK(layout.memory_of(r).kv_cache == 0);
  }
  CHECK(layout.owner_of_sequence(3) == 2);
  CHECK_THAT(layout.rank_map(), Catch::Contains("rank 5: FFN, layers 0-1, experts 2-3, rows from attention ranks 0-3"));

  cfg.model.ffn = FfnKind::dense;  // dense: FFN columns over the FFN ranks
  const ShardSpec s = RankLayout::build(cfg, 6).shard_of(5);
  CHECK(s.ffn_begin == cfg.model.ffn_hidden / 2);
  CHECK(s.ffn_count == cfg.model.ffn_hidden / 2);

  cfg.model.heads = 6;  // heads split unevenly: the first 6 % 4 attention ranks hold one more
  cfg.parallel.dp = 1;
  cfg.parallel.tp = 4;
  const RankLayout uneven = RankLayout::build(cfg, 6);
  for (int r = 0; r < 4; ++r) {
    CHECK(uneven.shard_of(r).head_count == (r < 2 ? 2 : 1));
    CHECK(uneven.shard_of(r).head_begin == (r < 2 ? 2 * r : r + 2));
  }
}

TEST_CASE("layout: separation refuses what it cannot run, naming the keys", "[layout]") {
  RunConfig cfg;  // 4 experts
  cfg.parallel.attn_ranks = 2;
  cfg.parallel.dp = 2;
  CHECK_NOTHROW(RankLayout::build(cfg, 4));
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.attn_ranks=2") && Catch::Contains("below 2"));
  CHECK_THROWS_WITH(RankLayout::build(cfg, 5), Catch::Contains("3 FFN ranks") && Catch::Contains("model.experts=4"));
  cfg.parallel.ep = 3;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.ep=3") && Catch::Contains("parallel.ep = 2"));
  cfg.parallel.ep = 2;
  CHECK_NOTHROW(RankLayout::build(cfg, 4));
  cfg.parallel.dp = 1;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("dp x tp = 2") && Catch::Contains("parallel.dp = 2"));
  cfg.parallel.dp = 2;
  cfg.parallel.pp = 2;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.pp=2") && Catch::Contains("parallel.pp = 1"));
  cfg.parallel.pp = 1;
  cfg.parallel.dp = 1;
  cfg.parallel.head_groups = 2;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.head_groups=2") && Catch::Contains("dp x tp"));
  cfg.parallel.head_groups = 1;
  cfg.parallel.tp = 8;
  cfg.parallel.attn_ranks = 8;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 10), Catch::Contains("parallel.tp=8") && Catch::Contains("model.heads=4"));
  cfg.parallel.tp = 1;
  cfg.parallel.dp = 3;
  cfg.parallel.attn_ranks = 3;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 5), Catch::Contains("parallel.dp=3") && Catch::Contains("workload.batch=4"));
  cfg.parallel.dp = 2;
  cfg.parallel.attn_ranks = 2;
  cfg.parallel.micro_batches = 3;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 4), Catch::Contains("parallel.micro_batches=3"));
}
