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
