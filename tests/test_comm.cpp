// The recorded MPI communicator, the data-plane DeviceComm through its MPI backend (the
// logic NCCL shares), the nccl-tests volumes, the backend choice and the layout checks, on
// every rank count CTest uses.
#include <catch2/catch.hpp>

#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/comm_stats.hpp"
#include "moeproxy/parallel/device_comm.hpp"
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
  CHECK(ar.alg_bytes == 2 * 8000u);
  CHECK(ar.bus_bytes == ar.bytes);
  CHECK(record(rs, "barrier").calls == 1);
}

TEST_CASE("comm stats: algbw and busbw bytes follow nccl-tests' definitions", "[comm]") {
  CHECK(bus_factor(CommOp::allreduce, 4) == 1.5);
  CHECK(bus_factor(CommOp::allreduce, 8) == 1.75);
  CHECK(bus_factor(CommOp::allgather, 4) == 0.75);
  CHECK(bus_factor(CommOp::reduce_scatter, 8) == 0.875);
  CHECK(bus_factor(CommOp::alltoall, 2) == 0.5);
  CHECK(bus_factor(CommOp::send, 2) == 1.0);
  CHECK(bus_factor(CommOp::broadcast, 3) == 1.0);
  CHECK(bus_factor(CommOp::allreduce, 1) == 0.0);  // one rank moves nothing
  CHECK(bus_factor(CommOp::barrier, 4) == 0.0);

  const CommVolume ar = collective_volume(CommOp::allreduce, 1000, 4);
  CHECK(ar.alg == 1000);
  CHECK(ar.bus == 1500);
  CHECK(ar.bytes == 1500);
  const CommVolume ag = collective_volume(CommOp::allgather, 4000, 4);  // 1000 from each rank
  CHECK(ag.alg == 4000);
  CHECK(ag.bus == 3000);
  const CommVolume bc = collective_volume(CommOp::broadcast, 100, 4, true);
  CHECK(bc.bus == 100);
  CHECK(bc.bytes == 300);
  CHECK(collective_volume(CommOp::broadcast, 100, 4, false).bytes == 0);

  // Uneven all-to-all-v from rank 1 of 3: its own block stays out of the bus bytes.
  const CommVolume a2a = alltoallv_volume({40, 400, 4000}, 1);
  CHECK(a2a.alg == 4440);
  CHECK(a2a.bus == 4040);
  // Even counts give nccl-tests' (n-1)/n.
  CHECK(alltoallv_volume({100, 100, 100, 100}, 2).bus == static_cast<std::uint64_t>(bus_factor(CommOp::alltoall, 4) * 400));
  CHECK(send_volume(64, 0, 1).bus == 64);
  CHECK(send_volume(64, 1, 1).bus == 0);
  CHECK(send_volume(64, 1, 1).alg == 64);
  CHECK(recv_volume(64, 0, 1).bytes == 0);
  CHECK(recv_volume(64, 0, 1).bus == 64);
  CHECK(displacements({3, 0, 2, 5}) == std::vector<int>{0, 3, 3, 5});

  CommLog log("ep", 4);
  log.add(CommOp::alltoallv, a2a, 2.0);
  log.add(CommOp::alltoallv, a2a, 1.0);
  const auto rs = log.records();
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].operation == "alltoallv");
  CHECK(rs[0].group == "ep");
  CHECK(rs[0].group_size == 4);
  CHECK(rs[0].calls == 2);
  CHECK(rs[0].alg_bytes == 2 * 4440u);
  CHECK(rs[0].bus_bytes == 2 * 4040u);
  CHECK(rs[0].seconds == 3.0);
}

TEST_CASE("comm backend: auto picks NCCL only where it is built and every rank has its own GPU", "[comm]") {
  CHECK(select_comm_backend(CommBackend::automatic, true, 1) == CommBackend::nccl);
  CHECK(select_comm_backend(CommBackend::automatic, true, 2) == CommBackend::mpi);
  CHECK(select_comm_backend(CommBackend::automatic, true, 0) == CommBackend::mpi);
  CHECK(select_comm_backend(CommBackend::automatic, false, 1) == CommBackend::mpi);
  CHECK(select_comm_backend(CommBackend::mpi, true, 1) == CommBackend::mpi);
  CHECK(select_comm_backend(CommBackend::nccl, true, 1) == CommBackend::nccl);
  CHECK_THROWS_AS(select_comm_backend(CommBackend::nccl, false, 1), InputError);
  CHECK_THROWS_WITH(select_comm_backend(CommBackend::nccl, false, 1),
                    Catch::Contains("parallel.comm = \"nccl\"") && Catch::Contains("host (CPU) build") &&
                        Catch::Contains("cmake --preset cuda"));
  CHECK_THROWS_WITH(select_comm_backend(CommBackend::nccl, true, 2),
                    Catch::Contains("2 ranks share one GPU") && Catch::Contains("one rank per GPU"));
  CHECK_THROWS_WITH(select_comm_backend(CommBackend::nccl, true, 0), Catch::Contains("no GPU"));
  // This binary: the host build has no NCCL, and its ranks see no GPU.
#ifdef KOKKOS_ENABLE_CUDA
  CHECK(nccl_built());
#else
  CHECK_FALSE(nccl_built());
  CHECK(ranks_per_gpu(MPI_COMM_WORLD) == 0);
#endif
}

namespace {
// A device buffer of `values`, and its contents back on the host.
Kokkos::View<float*, MemSpace> to_device(const std::vector<float>& values) {
  Kokkos::View<float*, MemSpace> d("test::buffer", values.size());
  auto h = Kokkos::create_mirror_view(d);
  std::copy(values.begin(), values.end(), h.data());
  Kokkos::deep_copy(d, h);
  return d;
}
std::vector<float> to_host(const Kokkos::View<float*, MemSpace>& d) {
  auto h = Kokkos::create_mirror_view(d);
  Kokkos::deep_copy(h, d);
  return std::vector<float>(h.data(), h.data() + h.size());
}
}  // namespace

TEST_CASE("device comm (MPI backend): every operation the strategies use gives the right values", "[comm]") {
  Communicator world(MPI_COMM_WORLD, "world");
  const ExecSpace space;
  const auto comm = make_device_comm(CommBackend::mpi, world, space);
  CHECK(comm->backend() == CommBackend::mpi);
  const int n = comm->size(), r = comm->rank();

  auto sum = to_device({float(r), 1.0f, 2.0f});
  comm->allreduce_sum(sum.data(), 3);
  CHECK(to_host(sum) == std::vector<float>{n * (n - 1) / 2.0f, float(n), 2.0f * n});

  auto mine = to_device({float(r), float(10 * r)});
  Kokkos::View<float*, MemSpace> all("test::all", 2 * n);
  comm->allgather(mine.data(), all.data(), 2);
  const std::vector<float> gathered = to_host(all);
  for (int i = 0; i < n; ++i) {
    CHECK(gathered[2 * i] == float(i));
    CHECK(gathered[2 * i + 1] == 10.0f * i);
  }

  // Block b of every rank's input is b + rank: rank b receives n * b + n(n-1)/2.
  std::vector<float> blocks;
  for (int b = 0; b < n; ++b) blocks.insert(blocks.end(), {float(b + r), 1.0f});
  auto scatter_in = to_device(blocks);
  Kokkos::View<float*, MemSpace> scatter_out("test::scatter_out", 2);
  comm->reduce_scatter_sum(scatter_in.data(), scatter_out.data(), 2);
  CHECK(to_host(scatter_out) == std::vector<float>{float(n * r + n * (n - 1) / 2), float(n)});

  // All-to-all-v: rank r sends d + 1 floats of value 100 r + d to rank d, self included.
  std::vector<int> send_counts(n), recv_counts(n, r + 1);
  std::vector<float> send_values;
  for (int d = 0; d < n; ++d) {
    send_counts[d] = d + 1;
    send_values.insert(send_values.end(), d + 1, float(100 * r + d));
  }
  const std::vector<int> send_displs = displacements(send_counts), recv_displs = displacements(recv_counts);
  auto send = to_device(send_values);
  Kokkos::View<float*, MemSpace> recv("test::recv", static_cast<std::size_t>(n) * (r + 1));
  comm->alltoallv(send.data(), send_counts, send_displs, recv.data(), recv_counts, recv_displs);
  const std::vector<float> received = to_host(recv);
  for (int s = 0; s < n; ++s)
    for (int i = 0; i < r + 1; ++i) CHECK(received[s * (r + 1) + i] == float(100 * s + r));

  // A ring of send/recv, even ranks first so that no two ranks wait on each other.
  if (n > 1) {
    auto out = to_device({float(r), 0.5f});
    Kokkos::View<float*, MemSpace> in("test::in", 2);
    const int next = (r + 1) % n, prev = (r + n - 1) % n;
    if (r % 2 == 0) {
      comm->send(out.data(), 2, next);
      comm->recv(in.data(), 2, prev);
    } else {
      comm->recv(in.data(), 2, prev);
      comm->send(out.data(), 2, next);
    }
    CHECK(to_host(in) == std::vector<float>{float(prev), 0.5f});
  }
  comm->barrier();

  const auto rs = comm->records();
  const CommRecord& a2a = record(rs, "alltoallv");
  CHECK(a2a.group == "world");
  CHECK(a2a.calls == 1);
  CHECK(a2a.alg_bytes == sizeof(float) * static_cast<std::uint64_t>(n * (n + 1) / 2));
  CHECK(a2a.bus_bytes == a2a.alg_bytes - sizeof(float) * (r + 1));
  CHECK(record(rs, "allreduce").alg_bytes == 3 * sizeof(float));
  CHECK(record(rs, "allgather").alg_bytes == 2 * sizeof(float) * n);
  CHECK(record(rs, "reducescatter").bus_bytes ==
        static_cast<std::uint64_t>(bus_factor(CommOp::reduce_scatter, n) * 2 * sizeof(float) * n));
  if (n > 1) {
    CHECK(record(rs, "send").bus_bytes == 2 * sizeof(float));
    CHECK(record(rs, "recv").bus_bytes == 2 * sizeof(float));
  }
  CHECK(record(rs, "barrier").calls == 1);
  // The data plane keeps its own records: the control plane saw none of this.
  CHECK(world.records().empty());
}

TEST_CASE("device comm (MPI backend): two non-blocking all-to-all-v in flight land in their own blocks", "[comm]") {
  Communicator world(MPI_COMM_WORLD, "world");
  const ExecSpace space;
  const auto comm = make_device_comm(CommBackend::mpi, world, space);
  const int n = comm->size(), r = comm->rank();
  // Transfer t sends every rank 2 floats of value 1000 t + 100 r + dest; both land in one
  // buffer, transfer 0 in the front half and transfer 1 in the back half.
  std::vector<int> counts(n, 2);
  const std::vector<int> displs = displacements(counts);
  std::vector<int> back_displs(displs);
  for (int& d : back_displs) d += 2 * n;
  std::vector<float> values[2];
  for (int t = 0; t < 2; ++t)
    for (int d = 0; d < n; ++d) values[t].insert(values[t].end(), 2, float(1000 * t + 100 * r + d));
  auto first = to_device(values[0]), second = to_device(values[1]);
  Kokkos::View<float*, MemSpace> recv("test::recv", static_cast<std::size_t>(4) * n);
  const DeviceComm::Ticket a = comm->ialltoallv(first.data(), counts, displs, recv.data(), counts, displs);
  const DeviceComm::Ticket b = comm->ialltoallv(second.data(), counts, displs, recv.data(), counts, back_displs);
  comm->test(b);
  comm->wait(b);
  comm->wait(a);
  const std::vector<float> got = to_host(recv);
  for (int t = 0; t < 2; ++t)
    for (int s = 0; s < n; ++s)
      for (int i = 0; i < 2; ++i) CHECK(got[(t * n + s) * 2 + i] == float(1000 * t + 100 * s + r));
  REQUIRE_THROWS_AS(comm->wait(a), std::logic_error);

  const auto rs = comm->records();
  const CommRecord& posted = record(rs, "ialltoallv");
  CHECK(posted.calls == 2);
  CHECK(posted.alg_bytes == 2 * 2 * sizeof(float) * static_cast<std::uint64_t>(n));
  CHECK(posted.bus_bytes == 2 * 2 * sizeof(float) * static_cast<std::uint64_t>(n - 1));
  CHECK(posted.hidden_seconds == 0.0);
  const CommRecord& waited = record(rs, "wait");
  CHECK(waited.calls >= 2);
  CHECK(waited.bytes == 0);
  CHECK(waited.hidden_seconds >= 0.0);
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

TEST_CASE("layout: ep_chunks needs expert parallelism and no separation", "[layout]") {
  RunConfig cfg;  // 4 experts, batch 4
  cfg.parallel.dp = 2;
  cfg.parallel.ep = 2;
  cfg.parallel.ep_chunks = 3;
  CHECK_NOTHROW(RankLayout::build(cfg, 2));
  CHECK(RankLayout::build(cfg, 2).describe().find("ep_chunks=3") != std::string::npos);
  cfg.parallel.ep = 1;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.ep_chunks=3") && Catch::Contains("parallel.ep > 1"));
  cfg.parallel.dp = 1;
  cfg.parallel.attn_ranks = 1;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2),
                    Catch::Contains("parallel.ep_chunks=3") && Catch::Contains("parallel.micro_batches"));
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
    CHECK(s.experts_in(cfg.model, 0) == std::vector<int>{r % 4});  // 4 experts on 4 ranks: whole experts
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
    CHECK(s.experts_in(cfg.model, 0) == std::vector<int>{r / 2});
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
    CHECK(s.experts_in(cfg.model, 0).empty());
    CHECK(s.ffn_count == 0);
    CHECK(layout.sequences_of(r).begin == 2 * (r / 2));
    CHECK(layout.owns_outputs(r) == (r % 2 == 0));
  }
  for (int r = 4; r < 6; ++r) {
    const ShardSpec s = layout.shard_of(r);
    CHECK(layout.ffn_rank(r));
    CHECK(s.head_count == 0);
    CHECK(s.experts_in(cfg.model, 1) == std::vector<int>{2 * (r - 4), 2 * (r - 4) + 1});
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

TEST_CASE("layout: head_distribution and expert_map place heads and experts explicitly", "[layout]") {
  RunConfig cfg;  // 2 layers, 4 heads, 4 experts, batch 4
  cfg.model.ffn_hidden = 120;
  cfg.parallel.tp = 3;
  cfg.parallel.head_distribution = {2, 1, 1};
  const RankLayout tp = RankLayout::build(cfg, 3);
  CHECK(tp.shard_of(0).head_begin == 0);
  CHECK(tp.shard_of(0).head_count == 2);
  CHECK(tp.shard_of(2).head_begin == 3);
  CHECK(tp.shard_of(2).head_count == 1);
  CHECK_THAT(tp.rank_map(), Catch::Contains("rank 1: layers 0-1, heads 2-2"));

  cfg = RunConfig{};
  cfg.parallel.dp = 2;
  cfg.parallel.ep = 2;
  cfg.parallel.expert_map = {{{1, 3}, {0, 2}}};
  const RankLayout ep = RankLayout::build(cfg, 2);
  CHECK(ep.placement().order(1) == std::vector<int>{1, 3, 0, 2});
  CHECK(ep.shard_of(1).experts_in(cfg.model, 1) == std::vector<int>{0, 2});
  CHECK_THAT(ep.rank_map(), Catch::Contains("experts 1,3"));

  cfg.parallel.expert_map = {{{}, {0, 1, 2, 3}}, {{3}, {0, 1, 2}}};  // per layer; rank 0 holds none of layer 0
  cfg.parallel.expert_map_per_layer = true;
  const RankLayout per_layer = RankLayout::build(cfg, 2);
  CHECK(per_layer.shard_of(0).experts_in(cfg.model, 0).empty());
  CHECK(per_layer.shard_of(0).experts_in(cfg.model, 1) == std::vector<int>{3});
  CHECK_THAT(per_layer.rank_map(), Catch::Contains("experts by layer 0:none 1:3"));
  CHECK(per_layer.memory_of(0).weights < per_layer.memory_of(1).weights);

  cfg = RunConfig{};  // separation: 3 FFN ranks, 6 experts, 3 + 2 + 1
  cfg.model.experts = 6;
  cfg.parallel.attn_ranks = 1;
  cfg.parallel.expert_map = {{{5, 0, 2}, {1, 4}, {3}}};
  const RankLayout sep = RankLayout::build(cfg, 4);
  CHECK(sep.shard_of(0).experts_in(cfg.model, 0).empty());
  CHECK(sep.shard_of(1).experts_in(cfg.model, 0) == std::vector<int>{5, 0, 2});
  CHECK(sep.shard_of(3).experts_in(cfg.model, 1) == std::vector<int>{3});
  CHECK(sep.memory_of(1).activations > sep.memory_of(3).activations);
  CHECK_THAT(sep.rank_map(), Catch::Contains("rank 2: FFN, layers 0-1, experts 1,4"));
}

TEST_CASE("layout: bad head_distribution and expert_map are refused, naming what is wrong", "[layout]") {
  RunConfig cfg;  // 2 layers, 4 heads, 4 experts
  cfg.parallel.dp = 2;
  cfg.parallel.ep = 2;
  cfg.parallel.expert_map = {{{0, 1}, {1, 2, 3}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.expert_map: expert 1 is on ranks 0 and 1"));
  cfg.parallel.expert_map = {{{0, 1}, {2}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("expert 3 is on no rank"));
  cfg.parallel.expert_map = {{{0, 1}, {2, 7}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("expert 7 on rank 1") && Catch::Contains("ids 0-3"));
  cfg.parallel.expert_map = {{{0, 1, 2, 3}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("1 rank lists") && Catch::Contains("parallel.ep=2"));
  cfg.parallel.expert_map = {{{0, 1}, {2, 3}}};
  cfg.parallel.expert_map_per_layer = true;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("for 1 layers") && Catch::Contains("model.layers=2"));
  cfg.parallel.expert_map = {{{0, 1}, {2, 3}}, {{0}, {1, 2}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("(layer 1): expert 3 is on no rank"));
  cfg.parallel.expert_map_per_layer = false;
  cfg.parallel.expert_map = {{{0, 1}, {2, 3}}};
  cfg.model.ffn = FfnKind::dense;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.expert_map needs an MoE model"));

  cfg = RunConfig{};
  cfg.parallel.tp = 2;
  cfg.parallel.head_distribution = {3, 2};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("sums to 5") && Catch::Contains("model.heads=4"));
  cfg.parallel.head_distribution = {4};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("1 entries") && Catch::Contains("parallel.tp=2"));
  cfg.parallel.head_distribution = {4, 0};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("entry 1 is 0"));
  cfg.parallel.tp = 1;
  cfg.parallel.head_groups = 2;
  cfg.parallel.head_distribution = {3, 1};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.head_distribution = [3, 1] with "
                                                               "parallel.head_groups=2 x parallel.dim_groups=1"));
  cfg.parallel.head_distribution.clear();
  cfg.parallel.expert_map = {{{0, 1, 2, 3}}};
  CHECK_THROWS_WITH(RankLayout::build(cfg, 2), Catch::Contains("parallel.expert_map with parallel.head_groups=2"));
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

TEST_CASE("layout: attention replicas keep KV cache for their group; a drill hands a replica to its buddy", "[layout]") {
  RunConfig cfg;  // 4 heads, 4 experts, batch 4
  cfg.parallel.attn_ranks = 4;
  cfg.parallel.dp = 2;
  cfg.parallel.tp = 2;
  const MemoryEstimate single = RankLayout::build(cfg, 6).memory_of(0);
  cfg.parallel.attn_replicas = 2;
  const RankLayout layout = RankLayout::build(cfg, 6);
  CHECK(layout.describe() == "dp=2 tp=2 attn_ranks=4 ep=2 attn_replicas=2");
  for (int r = 0; r < 4; ++r) {
    CHECK(layout.cache_of(r).begin == 0);
    CHECK(layout.cache_of(r).count == 4);
    CHECK(layout.sequences_of(r).count == 2);
    CHECK_FALSE(layout.out_of_service(r));
  }
  CHECK(layout.memory_of(0).kv_cache == 2 * single.kv_cache);
  CHECK(layout.owner_of_sequence(3) == 2);
  CHECK_THAT(layout.rank_map(), Catch::Contains("sequences 2-3 (kv cache for its replica group's 0-3)"));

  cfg.faults.fail_rank = 3;
  cfg.faults.fail_step = 0;
  const RankLayout drill = RankLayout::build(cfg, 6);
  CHECK(drill.failed_replica() == 1);
  CHECK(drill.takeover_replica() == 0);
  CHECK(drill.takeover_rank() == 1);
  for (int r = 0; r < 6; ++r) CHECK(drill.out_of_service(r) == (r == 2 || r == 3));
  CHECK(drill.owner_of_sequence(2) == 0);
  CHECK(drill.owner_of_sequence(3) == 0);
  CHECK_FALSE(drill.owns_outputs(2));
  CHECK(drill.owns_outputs(0));

  cfg.faults.fail_rank = 4;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 6), Catch::Contains("faults.fail_rank=4") && Catch::Contains("FFN rank"));
  cfg.faults = FaultConfig{};
  cfg.parallel.dp = 1;
  cfg.parallel.tp = 4;
  CHECK_THROWS_WITH(RankLayout::build(cfg, 6), Catch::Contains("parallel.attn_replicas=2") &&
                                                   Catch::Contains("parallel.dp=1") &&
                                                   Catch::Contains("parallel.dp=2 and parallel.tp=2"));
}
