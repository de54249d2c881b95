// moeproxy calibrate: measures what the performance model needs on the machine it runs on
// (GEMM rate, attention rate, memory bandwidth, kernel overhead; MPI all-reduce and
// all-to-all latency and bandwidth when launched on several ranks) and writes a machine file.
// Every rank measures at the same time, as ranks of a run share the node; rates are the
// mean over ranks.

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "calibrate.hpp"
#include "commands.hpp"
#include "moeproxy/core/kernels.hpp"
#include "moeproxy/core/perf_model.hpp"
#include "moeproxy/io/machine.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace moeproxy::app {

namespace {

using Context = CalibrationContext;

double gemm_rate(const Context& c, int m, int k, int n) {
  const Matrix a = filled("moeproxy::calibrate::a", m, k, 0.5f), b = filled("moeproxy::calibrate::b", k, n, 0.25f);
  const Matrix out("moeproxy::calibrate::c", m, n);
  const double s = time_it(c, [&] { gemm(c.space, a, b, out); });
  return mean_over_ranks(c, 2.0 * m * k * n / s);
}

// add_into reads two arrays and writes one.
double stream_rate(const Context& c, int rows, int cols) {
  const Matrix x = filled("moeproxy::calibrate::x", rows, cols, 1.0f), y = filled("moeproxy::calibrate::y", rows, cols, 0.0f);
  const double s = time_it(c, [&] { add_into(c.space, y, x); });
  return mean_over_ranks(c, 3.0 * sizeof(float) * rows * cols / s);
}

// Bytes per second of a GEMM of `rows` rows through a [k, n] weight: bound by streaming the
// weight, as decode's projections and experts are.
double skinny_gemm_rate(const Context& c, int rows, int k, int n) {
  const Matrix a = filled("moeproxy::calibrate::skinny_a", rows, k, 0.5f);
  const Matrix b = filled("moeproxy::calibrate::skinny_b", k, n, 0.25f);
  const Matrix out("moeproxy::calibrate::skinny_c", rows, n);
  const double s = time_it(c, [&] { gemm(c.space, a, b, out); });
  return mean_over_ranks(c, sizeof(float) * (static_cast<double>(rows) * k + static_cast<double>(k) * n + rows * n) / s);
}

double launch_overhead(const Context& c) {
  const Matrix x = filled("moeproxy::calibrate::tiny_x", 1, 8, 1.0f), y = filled("moeproxy::calibrate::tiny_y", 1, 8, 0.0f);
  return mean_over_ranks(c, time_it(c, [&] { add_into(c.space, y, x); }));
}

double allreduce_time(const Context& c, int floats) {
  std::vector<float> buf(static_cast<std::size_t>(floats), 1.0f);
  const double s = time_it(c, [&] { MPI_Allreduce(MPI_IN_PLACE, buf.data(), floats, MPI_FLOAT, MPI_SUM, c.world); });
  return mean_over_ranks(c, s);
}

// Each rank sends `floats` in total, spread evenly over the other ranks.
double alltoallv_time(const Context& c, int floats) {
  const int per = std::max(1, floats / std::max(1, c.size - 1));
  std::vector<int> counts(c.size, per), displs(c.size, 0);
  counts[c.rank] = 0;
  for (int r = 1; r < c.size; ++r) displs[r] = displs[r - 1] + counts[r - 1];
  const int total = displs.back() + counts.back();
  std::vector<float> send(static_cast<std::size_t>(total), 1.0f), recv(static_cast<std::size_t>(total));
  const double s = time_it(c, [&] {
    MPI_Alltoallv(send.data(), counts.data(), displs.data(), MPI_FLOAT, recv.data(), counts.data(), displs.data(),
                  MPI_FLOAT, c.world);
  });
  return mean_over_ranks(c, s);
}

double device_memory_bytes(int ranks_on_node) {
#ifdef KOKKOS_ENABLE_CUDA
  (void)ranks_on_node;
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess)
    return static_cast<double>(prop.totalGlobalMem);
  return 0.0;
#else
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0.0;
  while (in >> key >> kib)
    if (key == "MemTotal:") return kib * 1024.0 / ranks_on_node;
  return 0.0;
#endif
}

std::string fmt(double v, const char* unit) {
  std::ostringstream s;
  s.precision(4);
  s << v << " " << unit;
  return s.str();
}

}  // namespace

CLI::App* add_calibrate(CLI::App& app, CalibrateOptions& opt) {
  auto* cmd = app.add_subcommand("calibrate",
                                 "Measure this machine's GEMM, attention and memory rates and, on several ranks\n"
                                 "(mpiexec -n N), its MPI collectives; write a machine file for predict.");
  cmd->add_option("--out", opt.out, "Machine file to write (TOML)")->required();
  cmd->add_option("--name", opt.name, "machine.name to record (default: the host name and backend)");
  cmd->add_option("--seconds", opt.seconds, "Seconds per measurement, shared by its three rounds (at the six default sweeps of both kinds, about 12 minutes at 0.3 on the cores of the 2-core development VM)")->check(CLI::Range(0.01, 60.0))->capture_default_str();
  cmd->add_option("--sweeps", opt.sweeps_mib,
                  "MiB through the caches before each profiled call, comma-separated, each read (for prefill) and\n"
                  "as weights through GEMMs of 8 rows (for decode): predict looks a rank's kernels up between them\n"
                  "at its pass's footprint (docs/predict.md); the calibration's time grows with their sum")
      ->delimiter(',')
      ->check(CLI::Range(1.0 / 16, 65536.0))
      ->capture_default_str();
  return cmd;
}

int calibrate_command(const CalibrateOptions& opt, int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  Context c;
  c.budget = opt.seconds;
  for (const double mib : opt.sweeps_mib) c.sweeps.push_back(mib * 1024 * 1024);
  std::sort(c.sweeps.begin(), c.sweeps.end());
  c.sweeps.erase(std::unique(c.sweeps.begin(), c.sweeps.end()), c.sweeps.end());
  MPI_Comm_rank(c.world, &c.rank);
  MPI_Comm_size(c.world, &c.size);
  MPI_Comm node;
  MPI_Comm_split_type(c.world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int on_node = 1;
  MPI_Comm_size(node, &on_node);
  MPI_Comm_free(&node);
  auto say = [&](const std::string& what) {
    if (c.rank == 0) std::cout << "[moeproxy] calibrate: " << what << "\n" << std::flush;
  };

  MachineSpec m;
  std::map<std::string, std::string> notes;
  char host[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(host, &len);
  m.name = opt.name.empty() ? std::string(host, len) + " (" + ExecSpace::name() + ", " + std::to_string(c.size) +
                                  (c.size == 1 ? " rank)" : " ranks)")
                            : opt.name;
  m.devices_per_node = on_node;
  notes["machine.devices_per_node"] = "ranks sharing this node in the calibration run";

  std::vector<std::string> shapes;
  double best = 0.0;
  for (const auto& [mm, k, n] : std::vector<std::array<int, 3>>{{256, 256, 256}, {512, 512, 512}, {1024, 1024, 1024}}) {
    const double r = gemm_rate(c, mm, k, n);
    best = std::max(best, r);
    shapes.push_back(std::to_string(mm) + "^3 " + fmt(r / 1e9, "GFLOP/s"));
  }
  say("gemm fp32: " + shapes[0] + ", " + shapes[1] + ", " + shapes[2]);
  m.peak_flops_fp32 = best;
  m.peak_flops_fp16 = best;
  m.gemm_efficiency = 1.0;
  notes["compute.peak_tflops_fp32"] = "measured: best fp32 gemm of " + shapes[0] + ", " + shapes[1] + ", " + shapes[2];
  notes["compute.peak_tflops_fp16"] = "no fp16 kernels on this backend yet: the fp32 figure";
  notes["compute.gemm_efficiency"] = "the peak above is the measured GEMM rate";

  m.profiles = measure_profiles(c, say);
  notes["profile"] = "measured: microseconds of one call (attention: of one team) at each size (kernel_size in "
                     "core/include/moeproxy/core/kernel_profile.hpp), fp32, all ranks at once, each call after a sweep";
  notes["profile.sweep.bytes"] = "bytes read through the caches before each call, its inputs read back in after";
  notes["profile.weight_sweep.bytes"] =
      "bytes of weights read by GEMMs of 8 rows before each call, its inputs read back in after (decode passes)";
  notes["profile.gemm"] = "measured: [rows, n, microseconds] of [rows, n] x [n, n]";
  for (const auto& [name, parameter] : profiled_by_parameter()) {
    const std::string size = name == "rope" ? " (angles)" : name == "router" ? " (bytes)" : " of one team";
    notes["profile." + name] = "measured: [" + parameter + ", size" + size + ", microseconds]";
  }
  if (m.profiles.ranks > 0)
    notes["profile.ranks"] = "the ranks sync_wait, allreduce, alltoallv and send were measured on; predict uses the "
                             "collectives' profiles for groups of this size on one node, send's between any two ranks of one node";
  if (m.profiles.shared_caches)
    notes["profile.shared_caches"] = "the ranks swept the caches they share at once: predict looks a rank's kernels up "
                                     "at its share of the node's footprint";
  if (!m.profiles.sync_wait.empty())
    notes["profile.sync_wait"] = "measured on " + std::to_string(c.size) +
                                 " ranks: [microseconds of compute, microseconds waited in the next collective]";

  // The roofline's attention efficiency is the rate of the profile's 2 x 512 tokens of 8
  // heads x 64 in causal FLOPs, after the smallest sweep.
  const kernel_size::AttentionTeams attn_teams = kernel_size::attention_prefill(2, 8, 64, 512, 0);
  const double attn_flops = kernel_size::attention_flops(2, 8, 64, 512 * 0.5 * 513);
  const double attn =
      attn_flops / (attn_teams.teams * m.profiles.any()->find_by_parameter("attention_prefill")->seconds(64, attn_teams.size));
  m.attention_efficiency = attn / best;
  say("attention: " + fmt(attn / 1e9, "GFLOP/s"));
  notes["compute.attention_efficiency"] = "measured: attention 2 x 512 tokens, 8 heads x 64, " + fmt(attn / 1e9, "GFLOP/s");

  const double bw = stream_rate(c, 2048, 2048);
  m.memory_bandwidth = bw;
  m.memory_efficiency = 1.0;
  say("add_into 2048 x 2048 fp32: " + fmt(bw / 1e9, "GB/s"));
  notes["memory.bandwidth_gbs"] = "measured: add_into 2048 x 2048 fp32 (2 reads, 1 write), per rank";
  notes["memory.efficiency"] = "the bandwidth above is the measured rate";
  const double skinny = skinny_gemm_rate(c, 4, 2048, 2048);
  m.gemm_memory_efficiency = std::min(1.0, skinny / bw);
  say("gemm 4 x 2048 x 2048 fp32: " + fmt(skinny / 1e9, "GB/s"));
  notes["memory.gemm_efficiency"] = "measured: gemm of 4 rows through a 2048 x 2048 fp32 weight, " +
                                    fmt(skinny / 1e9, "GB/s") + " / the bandwidth above";
  m.memory_bytes = device_memory_bytes(on_node);
  notes["memory.capacity_gb"] = "device memory, or MemTotal / ranks on the node";

  m.kernel_overhead = launch_overhead(c);
  say("kernel launch + fence: " + fmt(m.kernel_overhead * 1e6, "us"));
  notes["compute.kernel_overhead_us"] = "measured: add_into of 8 floats + fence";

  if (c.size > 1) {
    const int small = 2, large = 1 << 20;
    const double n = c.size;
    const double t_small = allreduce_time(c, small), t_large = allreduce_time(c, large);
    // t = 2(n-1) alpha + 2(n-1)/n S / B, S the bytes per rank
    m.intra.latency = t_small / (2.0 * (n - 1.0));
    m.intra.bandwidth = 2.0 * (n - 1.0) / n * 4.0 * large / std::max(1e-12, t_large - t_small);
    m.intra.efficiency = 1.0;
    say("allreduce " + std::to_string(c.size) + " ranks: 8 B in " + fmt(t_small * 1e6, "us") + ", 4 MiB in " +
        fmt(t_large * 1e3, "ms"));
    const double a_small = alltoallv_time(c, c.size - 1), a_large = alltoallv_time(c, large);
    m.peer_overhead = std::max(0.0, (a_small - m.intra.latency) / (n - 1.0));
    say("alltoallv " + std::to_string(c.size) + " ranks: 4 B per peer in " + fmt(a_small * 1e6, "us") +
        ", 4 MiB per rank in " + fmt(a_large * 1e3, "ms"));
    notes["intra_node.latency_us"] = "measured: MPI_Allreduce of 8 B on " + std::to_string(c.size) + " ranks / 2(n-1)";
    notes["intra_node.bandwidth_gbs"] = "measured: MPI_Allreduce of 4 MiB, bus bandwidth 2(n-1)/n S / t";
    notes["inter_node.peer_overhead_us"] = "measured: MPI_Alltoallv of 4 B per peer, (t - alpha) / (n-1)";
  } else {
    // One rank: nothing to measure; a copy through memory is what a message would cost.
    m.intra.latency = m.kernel_overhead;
    m.intra.bandwidth = m.memory_bandwidth / 2.0;
    notes["intra_node.latency_us"] = "not measured (one rank): the kernel overhead";
    notes["intra_node.bandwidth_gbs"] = "not measured (one rank): half the memory bandwidth";
  }
  m.inter = m.intra;
  notes["inter_node.bandwidth_gbs"] = "not measured (one node): the intra-node figure";
  notes["inter_node.latency_us"] = "not measured (one node): the intra-node figure";

  if (c.rank == 0) {
    std::ofstream out(opt.out);
    out << "# Written by moeproxy calibrate on " << c.size << (c.size == 1 ? " rank" : " ranks")
        << " (docs/predict.md). Figures are per rank, measured while all ranks ran.\n"
        << io::format_machine(m, notes);
    if (!out) {
      std::cerr << "moeproxy: cannot write " << opt.out << "\n";
      return 1;
    }
    std::cout << "[moeproxy] calibrate: wrote " << opt.out << "\n";
  }
  return 0;
}

}  // namespace moeproxy::app
