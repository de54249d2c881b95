#include "moeproxy/parallel/engine.hpp"

#include "moeproxy/parallel/balance.hpp"
#include "moeproxy/parallel/device_comm.hpp"
#include "moeproxy/parallel/exchange.hpp"
#include "moeproxy/parallel/failover.hpp"
#include "moeproxy/parallel/pipeline.hpp"
#include "moeproxy/parallel/separation.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <string>

namespace moeproxy::parallel {

namespace {

void copy_rows_to_host(const Matrix& m, std::vector<float>& dst, std::size_t offset) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), m);
  std::copy(host.data(), host.data() + host.span(), dst.begin() + static_cast<std::ptrdiff_t>(offset));
}

std::uint64_t host_high_water_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

// Communication phases: their time is the part of the wall time spent communicating, the
// exposed communication (asynchronous transfers count only where the rank posted and waited).
double comm_seconds(const PhaseTable& t) {
  double s = 0.0;
  for (int l = 0; l < t.layers(); ++l)
    for (Phase p : {Phase::allreduce, Phase::dispatch, Phase::send, Phase::recv, Phase::wait})
      s += t.at(l, p);
  return s;
}

// Keeps rows [first, first + count) of `rows` (each `row` floats long).
void keep_rows(std::vector<float>& rows, int first, int count, std::size_t row) {
  if (rows.empty()) return;  // the run kept no outputs
  rows.erase(rows.begin() + static_cast<std::ptrdiff_t>((first + count) * row), rows.end());
  rows.erase(rows.begin(), rows.begin() + static_cast<std::ptrdiff_t>(first * row));
}

}  // namespace

RunOutput run_forward(const RunConfig& cfg, const RankLayout& layout, CommBackend comm, Communicator& world,
                      bool keep_outputs, std::ostream* progress, const WeightSource* weights) {
  const ModelConfig& m = cfg.model;
  const WorkloadConfig& w = cfg.workload;
  ExecSpace space;
  RunOutput out;
  // With attention replicas a rank keeps KV cache (and output rows) for its replica group.
  out.slice = layout.cache_of(world.rank());
  out.owns_outputs = layout.owns_outputs(world.rank());
  const Failover failover(layout, cfg, world.rank());
  const ShardSpec shard = layout.shard_of(world.rank());
  out.metrics.prefill = PhaseTable(m.layers);
  out.metrics.decode = PhaseTable(m.layers);
  const int d = m.hidden, n = out.slice.count;

  MPI_Comm tp_comm = MPI_COMM_NULL, ep_comm = MPI_COMM_NULL, pp_comm = MPI_COMM_NULL, dim_comm = MPI_COMM_NULL;
  MOEPROXY_MPI(MPI_Comm_split(world.handle(), layout.tp_group(world.rank()), world.rank(), &tp_comm));
  MOEPROXY_MPI(MPI_Comm_split(world.handle(), layout.ep_group(world.rank()), world.rank(), &ep_comm));
  MOEPROXY_MPI(MPI_Comm_split(world.handle(), layout.pp_group(world.rank()), world.rank(), &pp_comm));
  MOEPROXY_MPI(MPI_Comm_split(world.handle(), layout.dim_group(world.rank()), world.rank(), &dim_comm));
  Communicator tp(tp_comm, "tp"), ep(ep_comm, "ep"), pp(pp_comm, "pp"), dim(dim_comm, "dim");
  // Every rank creates the groups in the same order: NCCL's initialisation is collective.
  const std::unique_ptr<DeviceComm> tp_data = make_device_comm(comm, tp, space),
                                    ep_data = make_device_comm(comm, ep, space),
                                    pp_data = make_device_comm(comm, pp, space),
                                    dim_data = make_device_comm(comm, dim, space);
  out.comm_backend = comm;
  LayoutExchange exchange(*tp_data, *ep_data, *dim_data, shard.placement, shard.placement_rank,
                          cfg.parallel.comm_compression, cfg.parallel.ep_chunks);
  Transformer model(space, m, w, out.slice, shard, &exchange, weights);
  // Decode inputs on the first stage: each sequence's newest final-normed row.
  std::vector<float> next_input(static_cast<std::size_t>(n) * d);
  const int layer_end = shard.layer_begin + shard.layer_count;
  Pipeline pipeline(model, *pp_data, n, cfg.parallel.micro_batches, shard.layer_begin, layer_end);
  // Attention/MoE separation trades rows between the two sides over a copy of the world.
  MPI_Comm sep_comm = MPI_COMM_NULL;
  if (layout.separated()) MOEPROXY_MPI(MPI_Comm_dup(world.handle(), &sep_comm));
  std::unique_ptr<Communicator> sep;
  std::unique_ptr<Separation> separation;
  if (layout.separated()) {
    sep = std::make_unique<Communicator>(sep_comm, "sep");
    separation = std::make_unique<Separation>(space, model, *sep, exchange, layout, cfg);
  }
  auto pass = [&](int step, const Pipeline::Input& input, const Pipeline::Output& output, PhaseTable& timing) {
    if (separation)
      separation->run(step, input, output, next_input, timing);
    else
      pipeline.run(step, input, output, next_input, timing);
  };
  auto serve = [&](std::vector<Transformer::MicroBatch> micro_batches) {
    if (separation)
      separation->serve(std::move(micro_batches));
    else
      pipeline.serve(std::move(micro_batches));
  };
  if (layout.replicas() > 1 && !layout.ffn_rank(world.rank())) serve(failover.own());
  named_fence(space, "moeproxy::engine::weights_ready");
  if (keep_outputs) {
    out.hidden_prefill.resize(static_cast<std::size_t>(n) * w.prompt * d);
    out.hidden_decode.resize(static_cast<std::size_t>(n) * w.decode_steps * d);
  }

  const Pipeline::Input prefill_input = [&](const Transformer::MicroBatch& mb, const Matrix& x) {
    model.fill_inputs(mb, x);
  };
  const Pipeline::Output prefill_output = [&](const Transformer::MicroBatch& mb, const Matrix& y) {
    if (keep_outputs) copy_rows_to_host(y, out.hidden_prefill, static_cast<std::size_t>(mb.first) * w.prompt * d);
  };
  std::vector<float> step_out;
  const Pipeline::Input decode_input = [&](const Transformer::MicroBatch& mb, const Matrix& x) {
    auto host = Kokkos::create_mirror_view(Kokkos::HostSpace(), x);
    std::copy_n(next_input.begin() + static_cast<std::ptrdiff_t>(mb.first) * d, host.span(), host.data());
    Kokkos::deep_copy(space, x, host);
  };
  auto decode_output = [&](int g) -> Pipeline::Output {
    return [&, g](const Transformer::MicroBatch& mb, const Matrix& y) {
      if (!keep_outputs) return;
      step_out.resize(y.span());
      copy_rows_to_host(y, step_out, 0);
      for (int b = 0; b < mb.count; ++b)
        std::copy_n(step_out.begin() + static_cast<std::ptrdiff_t>(b) * d, d,
                    out.hidden_decode.begin() + (static_cast<std::ptrdiff_t>(mb.first + b) * w.decode_steps + g) * d);
    };
  };
  // Warm-up passes, then every count starts from zero: the figures are the timed passes'.
  // They rewrite the same cache positions and outputs the timed passes write again.
  if (w.warmup > 0) {
    world.barrier();
    Kokkos::Timer warm;
    PhaseTable untimed(m.layers);
    for (int i = 0; i < w.warmup; ++i) {
      pass(-1, prefill_input, prefill_output, untimed);
      if (w.decode_steps > 0) pass(0, decode_input, decode_output(0), untimed);
    }
    named_fence(space, "moeproxy::engine::warmed_up");
    if (progress)
      *progress << "[moeproxy] warm-up: " << w.warmup << (w.warmup == 1 ? " pass" : " passes") << " in "
                << warm.seconds() << " s (rank 0, untimed)\n" << std::flush;
  }
  model.reset_statistics();
  for (Communicator* c : {&tp, &ep, &pp, &dim, sep.get()})
    if (c) c->clear_records();
  for (DeviceComm* c : {tp_data.get(), ep_data.get(), pp_data.get(), dim_data.get()}) c->clear_records();
  world.barrier();
  Kokkos::Timer timer;
  Kokkos::Profiling::pushRegion("moeproxy::prefill");
  pass(-1, prefill_input, prefill_output, out.metrics.prefill);
  named_fence(space, "moeproxy::engine::prefill_end");
  Kokkos::Profiling::popRegion();
  out.metrics.prefill_seconds = timer.seconds();
  if (progress)
    *progress << "[moeproxy] prefill: " << w.prompt << " tokens x " << w.batch << " sequences in "
              << out.metrics.prefill_seconds << " s (rank 0)\n" << std::flush;

  // The failover drill (failover.hpp): when the failure happens, and when the buddy serves again.
  double failed_at = 0.0, recovered_at = 0.0;
  auto recover = [&](int g) {
    failed_at = recovered_at = timer.seconds();
    if (!failover.rebuilds()) return;
    Kokkos::Profiling::pushRegion("moeproxy::failover::recovery");
    PhaseTable recovery(m.layers);  // kept apart from the decode steps' phases
    if (separation) separation->set_sources(failover.recovery_sources());
    if (failover.takes_over()) serve(failover.failed());
    pass(-1, prefill_input, prefill_output, recovery);
    for (int s = 0; s < g; ++s) pass(s, decode_input, decode_output(s), recovery);
    if (failover.takes_over()) serve(failover.merged());
    if (separation) separation->set_sources(failover.sources_after());
    named_fence(space, "moeproxy::failover::recovered");
    Kokkos::Profiling::popRegion();
    recovered_at = timer.seconds();
  };
  world.barrier();
  timer.reset();
  Kokkos::Profiling::pushRegion("moeproxy::decode");
  // A progress line inside the timed loop stalls rank 0 while the launcher forwards it (50 to
  // 200 us a line on 2 ranks of a 2-core node, 2026-12-06): every 10% of the steps, and no
  // more than once a second, so that only runs long enough to need progress pay for it.
  const int report_every = std::max(1, w.decode_steps / 10);
  double reported_at = 0.0;
  std::unique_ptr<Balancer> balancer;
  if (separation && cfg.parallel.balance_threshold > 0.0)
    balancer = std::make_unique<Balancer>(cfg, layout, world, *separation);
  double step_began = 0.0;
  for (int g = 0; g < w.decode_steps; ++g) {
    if (failover.fails_at(g)) recover(g);
    if (!failover.stopped(g)) pass(g, decode_input, decode_output(g), out.metrics.decode);
    if (balancer) balancer->after_step(g, out.metrics.decode);
    named_fence(space, "moeproxy::engine::decode_step");
    const double step_ended = timer.seconds();
    out.metrics.decode_step_seconds.push_back(step_ended - step_began);
    step_began = step_ended;
    if (progress && failover.fails_at(g))
      *progress << "[moeproxy] failover drill: rank " << cfg.faults.fail_rank << " failed before decode step " << g
                << "; rank " << layout.takeover_rank() << " took over\n" << std::flush;
    if (progress && (g + 1) % report_every == 0 && g + 1 < w.decode_steps && timer.seconds() - reported_at >= 1.0) {
      *progress << "[moeproxy] decode step " << g + 1 << "/" << w.decode_steps << "\n" << std::flush;
      reported_at = timer.seconds();
    }
  }
  Kokkos::Profiling::popRegion();
  out.metrics.decode_seconds = step_began;  // the last step's end: its fence closed the decode
  if (progress && w.decode_steps > 0)
    *progress << "[moeproxy] decode: " << w.decode_steps << " steps x " << w.batch << " sequences in "
              << out.metrics.decode_seconds << " s (rank 0)\n" << std::flush;
  if (balancer) out.balance = balancer->log();

  // Model FLOPs of the sequences this rank served and its layers, shared evenly by the
  // tensor-parallel group (a failover's recomputation is not counted).
  const double share = static_cast<double>(shard.layer_count) / m.layers / tp.size();
  const int own = layout.sequences_of(world.rank()).count, served = failover.served().count;
  out.metrics.prefill_flops = share * forward_flops(m, own, w.prompt, 0);
  for (int g = 0; g < w.decode_steps; ++g) {
    const int serving = failover.stopped(g) ? 0 : g >= cfg.faults.fail_step && cfg.faults.drill() ? served : own;
    out.metrics.decode_flops += share * forward_flops(m, serving, 1, w.prompt + g);
  }
  auto& mem = out.metrics.memory;
  mem[static_cast<int>(MemoryKind::weights)] = model.weight_bytes();
  mem[static_cast<int>(MemoryKind::kv_cache)] = model.kv_cache_bytes();
  mem[static_cast<int>(MemoryKind::activations)] = model.activation_bytes();
  mem[static_cast<int>(MemoryKind::comm_buffers)] =
      exchange.buffer_bytes() + pipeline.buffer_bytes() + (separation ? separation->buffer_bytes() : 0);
  mem[static_cast<int>(MemoryKind::high_water)] = host_high_water_bytes();

  // Tensor-parallel peers route the same tokens, except under separation where each routes
  // its own share: count each token once. Every pipeline stage routes its own layers.
  const bool routes_own_tokens = layout.separated() || layout.coordinates(world.rank()).tp == 0;
  // Run-wide figures: walls are the slowest rank's; FLOPs and tokens add up.
  double walls[2] = {out.metrics.prefill_seconds, out.metrics.decode_seconds};
  world.allreduce_max(walls, 2);
  // Hidden transfers happen only inside the forward passes, so the records' totals are theirs.
  out.metrics.comm_exposed_seconds = comm_seconds(out.metrics.prefill) + comm_seconds(out.metrics.decode);
  if (sep)
    for (const CommRecord& r : sep->records()) out.metrics.comm_hidden_seconds += r.hidden_seconds;
  for (const DeviceComm* c : {tp_data.get(), ep_data.get(), pp_data.get(), dim_data.get()})
    for (const CommRecord& r : c->records()) out.metrics.comm_hidden_seconds += r.hidden_seconds;
  double sums[5] = {out.metrics.prefill_flops + out.metrics.decode_flops, device_peak_flops(m.precision),
                    out.metrics.comm_exposed_seconds, out.metrics.comm_hidden_seconds,
                    routes_own_tokens ? static_cast<double>(model.dropped_slots()) : 0.0};
  world.allreduce_sum(sums, 5);
  RunSummary& s = out.summary;
  s.prefill_tokens_per_s = static_cast<double>(w.batch) * w.prompt / walls[0];
  s.ttft_s = walls[0];
  s.tpot_s = w.decode_steps > 0 ? walls[1] / w.decode_steps : 0.0;
  s.decode_tokens_per_s = w.decode_steps > 0 ? static_cast<double>(w.batch) * w.decode_steps / walls[1] : 0.0;
  s.peak_flops = sums[1];
  s.mfu = s.peak_flops > 0.0 ? sums[0] / (walls[0] + walls[1]) / s.peak_flops : 0.0;
  s.comm_exposed_seconds = sums[2];
  s.comm_hidden_seconds = sums[3];
  s.comm_seconds_raw = sums[2] + sums[3];
  s.comm_fraction = sums[2] / world.size() / (walls[0] + walls[1]);
  s.dropped_tokens = static_cast<std::uint64_t>(sums[4]);
  if (cfg.faults.drill()) {
    FailoverSummary& f = s.failover;
    // The slowest rank's failure and recovery times; the recovery is the buddy's.
    double times[2] = {failed_at, failover.takes_over() ? recovered_at - failed_at : 0.0};
    world.allreduce_max(times, 2);
    double recovered = recovered_at;
    world.allreduce_max(&recovered, 1);
    const int g = cfg.faults.fail_step;
    f.ran = true;
    f.fail_rank = cfg.faults.fail_rank;
    f.fail_step = g;
    f.takeover_rank = layout.takeover_rank();
    f.sequences = w.batch / cfg.parallel.dp;
    f.recovery_s = times[1];
    f.tokens_per_s_before = g > 0 ? static_cast<double>(w.batch) * g / times[0] : 0.0;
    f.tokens_per_s_after = static_cast<double>(w.batch) * (w.decode_steps - g) / (walls[1] - recovered);
  }

  out.expert_tokens = model.expert_tokens();
  if (!routes_own_tokens) std::fill(out.expert_tokens.begin(), out.expert_tokens.end(), 0);
  if (!out.expert_tokens.empty()) {
    world.allreduce_sum(out.expert_tokens.data(), static_cast<int>(out.expert_tokens.size()));
    for (int l = 0; l < m.layers; ++l) {
      const auto first = out.expert_tokens.begin() + static_cast<std::ptrdiff_t>(l) * m.experts;
      const double mean = static_cast<double>(std::accumulate(first, first + m.experts, std::uint64_t{0})) / m.experts;
      const double mx = static_cast<double>(*std::max_element(first, first + m.experts));
      if (mean > 0.0) s.expert_imbalance = std::max(s.expert_imbalance, (mx - mean) / mean);
    }
  }
  // Outputs of the sequences served to the end: the buddy's and the failed replica's after a
  // failover, one's own otherwise.
  const SequenceSlice kept = failover.served();
  if (kept.count != out.slice.count) {
    keep_rows(out.hidden_prefill, kept.begin - out.slice.begin, kept.count, static_cast<std::size_t>(w.prompt) * d);
    keep_rows(out.hidden_decode, kept.begin - out.slice.begin, kept.count,
              static_cast<std::size_t>(w.decode_steps) * d);
    out.slice = kept;
  }
  for (const Communicator* c : {&tp, &ep, &pp, &dim, sep.get()})
    if (c)
      for (const CommRecord& r : c->records()) out.metrics.comm.push_back(r);
  for (const DeviceComm* c : {tp_data.get(), ep_data.get(), pp_data.get(), dim_data.get()})
    for (const CommRecord& r : c->records()) out.metrics.comm.push_back(r);
  s.comm_compression = to_string(cfg.parallel.comm_compression);
  for (const CommRecord& r : out.metrics.comm) s.comm_bytes_saved += r.uncompressed_bytes - r.bytes;
  world.allreduce_sum(&s.comm_bytes_saved, 1);
  // The DeviceComms hold their own duplicates (MPI) or NCCL communicators: these can go.
  for (MPI_Comm* c : {&tp_comm, &ep_comm, &pp_comm, &dim_comm, &sep_comm})
    if (*c != MPI_COMM_NULL) MOEPROXY_MPI(MPI_Comm_free(c));
  return out;
}

SampleOutputs gather_sample(const RunConfig& cfg, const RankLayout& layout, const RunOutput& out,
                            Communicator& world, int count) {
  const int S = cfg.workload.prompt, G = cfg.workload.decode_steps, d = cfg.model.hidden;
  SampleOutputs sample;
  if (world.rank() == 0) {
    sample.prefill.resize(static_cast<std::size_t>(count) * S * d);
    sample.decode.resize(static_cast<std::size_t>(count) * G * d);
  }
  for (int seq = 0; seq < count; ++seq) {
    const int owner = layout.owner_of_sequence(seq);
    const std::size_t pre = static_cast<std::size_t>(S) * d, dec = static_cast<std::size_t>(G) * d;
    if (world.rank() == owner) {
      const std::size_t local = static_cast<std::size_t>(seq - out.slice.begin);
      const float* p = out.hidden_prefill.data() + local * pre;
      const float* q = out.hidden_decode.data() + local * dec;
      if (owner == 0) {
        std::copy_n(p, pre, sample.prefill.begin() + static_cast<std::ptrdiff_t>(seq * pre));
        std::copy_n(q, dec, sample.decode.begin() + static_cast<std::ptrdiff_t>(seq * dec));
      } else {
        world.send(p, static_cast<int>(pre), 0, 2 * seq);
        world.send(q, static_cast<int>(dec), 0, 2 * seq + 1);
      }
    } else if (world.rank() == 0) {
      world.recv(sample.prefill.data() + seq * pre, static_cast<int>(pre), owner, 2 * seq);
      world.recv(sample.decode.data() + seq * dec, static_cast<int>(dec), owner, 2 * seq + 1);
    }
  }
  return sample;
}

double device_peak_flops(Precision precision) {
#if defined(KOKKOS_ENABLE_CUDA)
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess &&
      std::string(prop.name).find("H100") != std::string::npos)
    return precision == Precision::fp16 ? 989.4e12 : 66.9e12;  // H100 SXM dense, datasheet
#else
  (void)precision;
#endif
  return 0.0;
}

}  // namespace moeproxy::parallel
