// moeproxy: the command-line driver. It parses, validates, picks the backend and hands the
// work to parallel/ and io/; no physics lives here.

#include <mpi.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <sstream>

#include "commands.hpp"
#include "fatal_signals.hpp"
#include "moeproxy/core/reference.hpp"
#include "moeproxy/core/weights.hpp"
#include "moeproxy/io/checkpoint.hpp"
#include "moeproxy/io/deck.hpp"
#include "moeproxy/io/machine.hpp"
#include "moeproxy/io/report.hpp"
#include "moeproxy/io/results.hpp"
#include "moeproxy/parallel/comm_stats.hpp"
#include "moeproxy/parallel/compression.hpp"
#include "moeproxy/parallel/device_comm.hpp"
#include "moeproxy/parallel/engine.hpp"
#include "moeproxy/parallel/route_groups.hpp"
#include "bench.hpp"
#include "version.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

using namespace moeproxy;

constexpr int exit_ok = 0, exit_failed = 1, exit_input = 2;
// Beyond this many FLOPs the double-precision host reference would take minutes: auto mode
// then skips it and says so.
constexpr double auto_reference_flop_limit = 2e10;

struct Options {
  std::string deck;
  std::vector<std::string> sets;
  int ranks = 1;
  bool preflight = true;
};

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// Rank 0 decides, every rank learns the outcome: no rank walks into a collective alone.
bool agree(bool ok_on_root) {
  int flag = ok_on_root ? 1 : 0;
  MPI_Bcast(&flag, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return flag != 0;
}

std::string broadcast_string(std::string s, int root = 0) {
  int n = static_cast<int>(s.size());
  MPI_Bcast(&n, 1, MPI_INT, root, MPI_COMM_WORLD);
  s.resize(n);
  MPI_Bcast(s.data(), n, MPI_CHAR, root, MPI_COMM_WORLD);
  return s;
}

// For checks every rank makes on its own figures: the lowest rank with a problem explains it
// on rank 0's stderr, and all ranks learn the outcome together.
bool all_ranks_fine(const std::string& problem) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int first = problem.empty() ? size : world_rank();
  MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == size) return true;
  const std::string message = broadcast_string(problem, first);
  if (world_rank() == 0) std::cerr << "moeproxy: input error: " << message << "\n";
  return false;
}

// Rank 0 reads and validates the deck (one file read, whatever the job size); every rank
// then parses the same text with the same overrides. Returns false (after rank 0 printed
// why) when the input is bad.
bool load_config(const Options& opt, RunConfig& cfg) {
  std::string error, text;
  if (world_rank() == 0) {
    try {
      cfg = io::load_deck(opt.deck, opt.sets);
      std::ifstream in(opt.deck);
      text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    } catch (const InputError& e) {
      error = e.what();
    }
  }
  error = broadcast_string(error);
  if (!error.empty()) {
    if (world_rank() == 0) std::cerr << "moeproxy: input error: " << error << "\n";
    return false;
  }
  text = broadcast_string(text);
  if (world_rank() != 0) {
    cfg = io::parse_deck(text, opt.deck, opt.sets);
    cfg.deck_path = opt.deck;
  }
  return true;
}

// The output file must be creatable before hours of compute are spent, and the final rename
// onto it must be possible: a directory in the way is only found out at the very end.
std::string check_output_writable(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string key = "output.file = \"" + path + "\"";
  if (path.empty() || path.back() == '/')
    return key + ": expected a file name, e.g. output.file = \"results/run.h5\"";
  if (const std::string error = io::results_path_error(path); !error.empty()) return key + " " + error;
  std::error_code ec;
  if (fs::is_directory(path, ec))
    return key + " is a directory; name a file inside it, e.g. " + (fs::path(path) / "run.h5").string();
  // is_directory reports a path that does not exist yet as an error, which a new file is.
  ec.clear();
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) return key + ": cannot create directory " + parent.string() + ": " + ec.message();
  const std::string probe = path + ".partial";
  std::ofstream f(probe);
  if (!f) return key + ": cannot write in " + (parent.empty() ? std::string(".") : parent.string());
  f.close();
  fs::remove(probe, ec);
  return "";
}

// The machine file is only read after the run, for the suggested split: a wrong path must
// not cost the run.
std::string check_balance_machine(const RunConfig& cfg) {
  const ParallelConfig& p = cfg.parallel;
  if (p.balance_threshold <= 0.0 || p.balance_machine.empty()) return "";
  try {
    (void)io::load_machine(p.balance_machine);
  } catch (const InputError& e) {
    return "parallel.balance_machine = \"" + p.balance_machine + "\": " + e.what();
  }
  return "";
}

// The split the performance model prefers, made on rank 0 (write_results shares it).
RankSplitSuggestion suggest_split(const RunConfig& cfg, int ranks) {
  if (cfg.parallel.balance_machine.empty()) {
    RankSplitSuggestion none;
    none.current_attn_ranks = cfg.parallel.attn_ranks;
    none.note = "set parallel.balance_machine to a machine file (inputs/machines/) for one";
    return none;
  }
  return suggest_attention_split(cfg, io::load_machine(cfg.parallel.balance_machine), ranks);
}

// Keys the deck accepts for features this version does not have yet: running something else
// under their name would produce results that look valid and are not.
std::string check_implemented(const RunConfig& cfg) {
  if (cfg.verify.mode == VerifyMode::file)
    return "verify.mode = \"file\": comparing with an earlier run's results file is not implemented yet; "
           "use verify.mode = \"reference\" or \"auto\"";
  // Whether ranks share GPUs is only known at run time; a build without NCCL is known now.
  try {
    (void)parallel::select_comm_backend(cfg.parallel.comm, parallel::nccl_built(), 1);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

// ---- Memory pre-flight: refuse a run that cannot fit before anything big is allocated.

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 6) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", bytes, units[u]);
  return buf;
}

// Allocations the estimate cannot see: the Kokkos, OpenMP and HDF5 runtimes, the report and
// the results writer. Measured high-water marks of tiny runs exceed the estimate by less.
constexpr std::uint64_t runtime_allowance = 64ull << 20;

std::optional<std::uint64_t> read_bytes_file(const std::string& path) {
  std::ifstream in(path);
  std::uint64_t v = 0;
  if (!(in >> v)) return std::nullopt;  // also "max": no limit
  return v;
}

// What a batch system's memory cgroup (Slurm, containers) still grants this process; the
// kernel's MemAvailable does not know about it, and exceeding it means an OOM kill.
std::optional<std::uint64_t> cgroup_headroom() {
  std::ifstream in("/proc/self/cgroup");
  std::optional<std::uint64_t> best;
  std::string line;
  while (std::getline(in, line)) {
    const auto c1 = line.find(':'), c2 = line.find(':', c1 + 1);
    if (c1 == std::string::npos || c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1), path = line.substr(c2 + 1);
    std::string root, limit_file, usage_file;
    if (controllers.empty()) {
      root = "/sys/fs/cgroup", limit_file = "memory.max", usage_file = "memory.current";
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      root = "/sys/fs/cgroup/memory", limit_file = "memory.limit_in_bytes", usage_file = "memory.usage_in_bytes";
    } else {
      continue;
    }
    // Inside a container the cgroup path names the host's hierarchy, and the mount point
    // itself is this process's group.
    for (const std::string& dir : {root + path, root}) {
      const auto limit = read_bytes_file(dir + "/" + limit_file), usage = read_bytes_file(dir + "/" + usage_file);
      if (!usage) continue;
      // cgroup v1 spells "no limit" as a page-rounded INT64_MAX.
      if (limit && *limit < (1ull << 62)) {
        const std::uint64_t room = *limit > *usage ? *limit - *usage : 0;
        best = best ? std::min(*best, room) : room;
      }
      break;
    }
  }
  return best;
}

struct HostMemory {
  std::uint64_t bytes = 0;  // for the whole node
  std::string source;
};

std::optional<HostMemory> host_available() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  std::optional<HostMemory> avail;
  while (std::getline(in, line)) {
    std::uint64_t kib = 0;
    if (line.rfind("MemAvailable:", 0) == 0 && std::istringstream(line.substr(13)) >> kib)
      avail = HostMemory{kib * 1024, "MemAvailable"};
  }
  if (!avail) return avail;
  const auto room = cgroup_headroom();
  if (room && *room < avail->bytes) *avail = HostMemory{*room, "memory cgroup limit"};
  return avail;
}

std::string ranks_phrase(int n) { return std::to_string(n) + (n == 1 ? " rank" : " ranks"); }

int node_rank_count() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

// Host vectors that outlive the forward pass: the final hidden states the engine keeps for
// verification and the dump; on a GPU also the host copy the prefill output passes through.
std::uint64_t host_result_bytes(const RunConfig& cfg, int sequences) {
  const std::uint64_t rows = static_cast<std::uint64_t>(sequences) *
                             (static_cast<std::uint64_t>(cfg.workload.prompt) + cfg.workload.decode_steps);
  std::uint64_t bytes = rows * cfg.model.hidden * sizeof(float);
#ifdef KOKKOS_ENABLE_CUDA
  bytes += static_cast<std::uint64_t>(sequences) * cfg.workload.prompt * cfg.model.hidden * sizeof(float);
#endif
  return bytes;
}

// What to change, for the part of the need that is too big.
std::string memory_advice(const RunConfig& cfg, const parallel::RankLayout& layout, int rank,
                          std::uint64_t weights, std::uint64_t per_sequence, std::uint64_t available) {
  const ModelConfig& m = cfg.model;
  const WorkloadConfig& w = cfg.workload;
  std::ostringstream s;
  if (weights >= available) {
    s << "\n  the weights this rank holds (" << format_bytes(weights) << ") do not fit alone: split the model "
      << "over more ranks (parallel.tp = " << cfg.parallel.tp;
    if (m.is_moe()) s << ", parallel.ep = " << cfg.parallel.ep;
    s << ") or shrink it (model.layers = " << m.layers << ", model.hidden = " << m.hidden
      << ", model.ffn_hidden = " << m.ffn_hidden;
    if (m.is_moe()) s << ", model.experts = " << m.experts;
    s << ")";
  }
  // Fewer sequences help unless the weights alone are too big.
  if (weights < available || per_sequence >= available) {
    s << "\n  the KV cache, activations and result buffers (" << format_bytes(per_sequence) << ") grow with the "
      << layout.cache_of(rank).count << " sequences on this rank (workload.batch = " << w.batch
      << " over parallel.dp = " << cfg.parallel.dp << ") of workload.prompt = " << w.prompt
      << " + workload.decode_steps = " << w.decode_steps
      << " tokens: run fewer sequences per rank (more ranks and a larger parallel.dp, or a smaller "
         "workload.batch) or a shorter workload.prompt";
  }
  s << "\n  (moeproxy run --no-preflight skips this check)";
  return s.str();
}

// This rank's share of the node's host memory against what it will allocate on the host:
// everything on a CPU build, the result buffers on a GPU build.
std::string host_preflight(const RunConfig& cfg, const parallel::RankLayout& layout,
                           [[maybe_unused]] const MemoryEstimate& e, std::ostream* progress) {
  const int rank = world_rank(), sequences = layout.cache_of(rank).count;
  const std::uint64_t results = host_result_bytes(cfg, sequences);
#ifdef KOKKOS_ENABLE_CUDA
  const std::uint64_t weights = 0, per_sequence = results;
  std::string parts = "result buffers " + format_bytes(results);
#else
  const std::uint64_t weights = e.weights, per_sequence = e.kv_cache + e.activations + results;
  std::string parts = "weights " + format_bytes(e.weights) + ", KV cache " + format_bytes(e.kv_cache) +
                      ", activations " + format_bytes(e.activations) + ", result buffers " + format_bytes(results);
#endif
  const std::uint64_t need = weights + per_sequence + runtime_allowance;
  parts += ", runtime " + format_bytes(runtime_allowance);
  const int sharing = node_rank_count();
  const std::optional<HostMemory> node = host_available();
  if (!node) {
    if (progress) *progress << "[moeproxy] memory pre-flight: host memory unknown (no MemAvailable), not checked\n";
    return "";
  }
  const std::uint64_t share = node->bytes / sharing;
  if (progress)
    *progress << "[moeproxy] host memory per rank: needs " << format_bytes(need) << " of " << format_bytes(share)
              << " (" << node->source << " / " << ranks_phrase(sharing) << " on the node)\n" << std::flush;
  if (need <= share) return "";
  std::ostringstream s;
  s << "the run does not fit in host memory on rank " << rank << ": it needs " << format_bytes(need)
    << " per rank (" << parts << ") but " << format_bytes(share) << " is available (" << node->source << " "
    << format_bytes(node->bytes) << " shared by " << ranks_phrase(sharing) << " on the node)"
    << memory_advice(cfg, layout, rank, weights, per_sequence, share > runtime_allowance ? share - runtime_allowance : 0);
  return s.str();
}

#ifdef KOKKOS_ENABLE_CUDA
// After Kokkos initialised (it picks the GPU and creates the context) and before the model is
// allocated. Ranks on the same GPU split its free memory.
std::string device_preflight(const RunConfig& cfg, const parallel::RankLayout& layout, const MemoryEstimate& e,
                             std::ostream* progress) {
  int device = 0;
  cudaDeviceProp prop{};
  const bool known = cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess;
  // Every rank takes part, also one that cannot name its GPU (0 sharers): it refuses below.
  const int sharing = parallel::gpu_sharers(MPI_COMM_WORLD);
  // Every sharer's context must exist before the free memory is read.
  MPI_Barrier(MPI_COMM_WORLD);
  std::size_t free_bytes = 0, total_bytes = 0;
  const cudaError_t status =
      known && sharing > 0 ? cudaMemGetInfo(&free_bytes, &total_bytes) : cudaErrorInvalidDevice;
  if (status != cudaSuccess)
    return "cannot query the GPU of rank " + std::to_string(world_rank()) + " for the memory pre-flight: " +
           cudaGetErrorString(status);
  const std::uint64_t share = free_bytes / sharing, need = e.total();
  if (progress)
    *progress << "[moeproxy] GPU memory per rank: needs " << format_bytes(need) << " of " << format_bytes(share)
              << " (free on " << prop.name << " / " << ranks_phrase(sharing) << ")\n" << std::flush;
  if (need <= share) return "";
  const int rank = world_rank();
  std::ostringstream s;
  s << "the run does not fit in GPU memory on rank " << rank << ": it needs " << format_bytes(need)
    << " per rank (weights " << format_bytes(e.weights) << ", KV cache " << format_bytes(e.kv_cache)
    << ", activations " << format_bytes(e.activations) << ") but " << format_bytes(share) << " is available ("
    << format_bytes(free_bytes) << " free of " << format_bytes(total_bytes) << " on " << prop.name << ", shared by "
    << ranks_phrase(sharing) << ")" << memory_advice(cfg, layout, rank, e.weights, e.kv_cache + e.activations, share);
  return s.str();
}
#endif

std::string describe_backend() {
  std::ostringstream s;
  s << "Kokkos " << ExecSpace::name() << " (concurrency " << ExecSpace().concurrency() << ")";
  return s.str();
}

std::string host_name() {
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  return std::string(name, len);
}

std::string command_line(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) s += (i ? " " : "") + std::string(argv[i]);
  return s;
}

// What verify() compares, decided before the run: the run copies its final hidden states to
// the host only where something reads them (parallel::run_forward, keep_outputs).
struct VerificationPlan {
  int sample = 0;  // global sequences [0, sample) compared with the reference; 0: none
  int asked = 0;   // verify.sample, at most the batch
  bool drops = false;
  RouteGroups groups;
  std::string skipped;  // why nothing is compared, where sample is 0
};

VerificationPlan plan_verification(const RunConfig& cfg, const parallel::RankLayout& layout) {
  const VerifyConfig& v = cfg.verify;
  VerificationPlan plan;
  plan.asked = std::min(v.sample, cfg.workload.batch);
  if (v.mode == VerifyMode::none || plan.asked == 0) {
    plan.skipped = "verification disabled";
    return plan;
  }
  // Which tokens a capacity drops depends on the tokens routed together: the reference
  // routes the run's groups (route_groups.hpp) and runs whole groups.
  plan.drops = cfg.model.is_moe() && cfg.model.capacity_factor > 0.0;
  int sample = plan.asked;
  if (plan.drops) {
    if (const std::string why = parallel::regrouping(cfg); !why.empty()) {
      plan.skipped = "capacity_factor > 0: dropped tokens depend on how tokens are grouped, and " + why;
      return plan;
    }
    const RouteGroups all = parallel::route_groups(cfg, layout);
    sample = parallel::whole_groups(all, cfg.workload, sample);
    plan.groups = parallel::first_groups(all, cfg.workload, sample);
  }
  const double cost = reference_flops(cfg.model, cfg.workload, sample);
  if (v.mode == VerifyMode::automatic && cost > auto_reference_flop_limit) {
    std::ostringstream note;
    note << "host reference would cost " << cost / 1e9 << " GFLOP";
    if (sample > plan.asked) note << " for the " << sample << " sequences of whole route groups (capacity_factor > 0)";
    note << "; set verify.mode=reference to force it";
    plan.skipped = note.str();
    return plan;
  }
  plan.sample = sample;
  return plan;
}

void verify(const RunConfig& cfg, const parallel::RankLayout& layout, const parallel::RunOutput& out,
            parallel::Communicator& world, const WeightSource* weights, const VerificationPlan& plan,
            RunSummary& s) {
  s.tolerance = verification_tolerance(cfg.model.precision);
  const bool compressed = parallel::compresses_transfers(cfg);
  if (compressed) {
    s.compression_tolerance = compression_tolerance(cfg.parallel.comm_compression, cfg.model, cfg.workload);
    s.tolerance += s.compression_tolerance;
  }
  if (plan.sample == 0) {
    s.verification_note = plan.skipped;
    return;
  }
  const int sample = plan.sample, asked = plan.asked;
  const bool drops = plan.drops;
  const RouteGroups& groups = plan.groups;
  const parallel::SampleOutputs got = parallel::gather_sample(cfg, layout, out, world, sample);
  // Where every row agrees, all are compared; otherwise the rows the reference's routing does
  // not determine (near ties, docs/model.md) are left out, and the note counts them.
  double result[3] = {0.0, 0.0, 0.0};  // max_rel_error, rows compared, rows left out
  if (world.rank() == 0) {
    const ReferenceOutput ref =
        reference_forward(cfg.model, cfg.workload, 0, sample, cfg.workload.batch, weights, groups);
    result[0] = std::max(max_relative_error(got.prefill, ref.prefill), max_relative_error(got.decode, ref.decode));
    result[1] = static_cast<double>(ref.prefill_determined.size() + ref.decode_determined.size());
    if (result[0] > s.tolerance) {
      result[0] = std::max(max_relative_error(got.prefill, ref.prefill, ref.prefill_determined),
                           max_relative_error(got.decode, ref.decode, ref.decode_determined));
      for (const auto* rows : {&ref.prefill_determined, &ref.decode_determined})
        result[2] += static_cast<double>(std::count(rows->begin(), rows->end(), 0));
      result[1] -= result[2];
    }
  }
  world.broadcast(result, sizeof result, 0);
  const long compared = std::lround(result[1]), left_out = std::lround(result[2]);
  s.max_rel_error = result[0];
  s.verification = compared == 0 ? "SKIPPED" : result[0] <= s.tolerance ? "PASS" : "FAIL";
  s.verification_note = "host fp64 reference, " + std::to_string(sample) + " sequences";
  if (drops)
    s.verification_note += " routed as in the run (" + std::to_string(groups.prefill.size()) + " prefill and " +
                           std::to_string(groups.decode.size()) + " decode groups)" +
                           (sample > asked ? "; verify.sample = " + std::to_string(asked) +
                                                 " rounded up to whole groups, whose drops depend on all their tokens"
                                           : std::string());
  if (left_out > 0)
    s.verification_note += "; " + std::to_string(left_out) + " of " + std::to_string(compared + left_out) +
                           " output rows not compared: from a near tie in learned routing on, the expert choice "
                           "is within the " + std::string(to_string(cfg.model.precision)) + " tolerance";
  if (compressed)
    s.verification_note += ", uncompressed: the tolerance includes " + std::string(to_string(cfg.parallel.comm_compression)) +
                           " transfers' " + std::to_string(s.compression_tolerance);
  else if (cfg.parallel.comm_compression != CommCompression::none)
    s.verification_note += "; parallel.comm_compression = \"" + std::string(to_string(cfg.parallel.comm_compression)) +
                           "\" compressed nothing: this layout has neither separation nor an expert group";
}

io::ReportInput reduce_for_report(const parallel::RunOutput& out, parallel::Communicator& world) {
  io::ReportInput in;
  auto stats = [&](const PhaseTable& t, io::PhaseStats& st) {
    std::vector<double> per(phase_count, 0.0);
    for (int l = 0; l < t.layers(); ++l)
      for (int p = 0; p < phase_count; ++p) per[p] += t.at(l, static_cast<Phase>(p));
    st.min = st.mean = st.max = per;
    world.allreduce_min(st.min.data(), phase_count);
    world.allreduce_max(st.max.data(), phase_count);
    world.allreduce_sum(st.mean.data(), phase_count);
    for (double& x : st.mean) x /= world.size();
  };
  stats(out.metrics.prefill, in.prefill);
  stats(out.metrics.decode, in.decode);
  std::vector<double> mem(out.metrics.memory.begin(), out.metrics.memory.end());
  world.allreduce_max(mem.data(), memory_kind_count);
  for (int k = 0; k < memory_kind_count; ++k) in.max_memory[k] = static_cast<std::uint64_t>(mem[k]);
  return in;
}

int run_command(const Options& opt, int argc, char** argv) {
  RunConfig cfg;
  if (!load_config(opt, cfg)) return exit_input;
  int world_size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  std::string error = check_implemented(cfg);
  if (error.empty()) {
    try {
      (void)parallel::RankLayout::build(cfg, world_size);
    } catch (const InputError& e) {
      error = e.what();
    }
  }
  // The checkpoint is checked whole on rank 0 before anything big is allocated anywhere.
  if (error.empty() && world_rank() == 0 && !cfg.model.checkpoint.empty()) {
    try {
      (void)io::open_checkpoint(cfg.model.checkpoint, cfg.model);
    } catch (const InputError& e) {
      error = e.what();
    }
  }
  if (error.empty() && world_rank() == 0) error = check_balance_machine(cfg);
  if (error.empty() && world_rank() == 0) error = check_output_writable(cfg.output.file);
  if (!agree(error.empty())) {
    if (world_rank() == 0) std::cerr << "moeproxy: input error: " << error << "\n";
    return exit_input;
  }
  const std::unique_ptr<WeightSource> weights =
      cfg.model.checkpoint.empty() ? nullptr : io::open_checkpoint(cfg.model.checkpoint, cfg.model);
  const parallel::RankLayout layout = parallel::RankLayout::build(cfg, world_size);
  std::ostream* progress = world_rank() == 0 ? &std::cout : nullptr;
  const MemoryEstimate estimate = layout.memory_of(world_rank());
  if (opt.preflight && !all_ranks_fine(host_preflight(cfg, layout, estimate, progress))) return exit_input;

  Kokkos::ScopeGuard kokkos(argc, argv);
#ifdef KOKKOS_ENABLE_CUDA
  if (opt.preflight && !all_ranks_fine(device_preflight(cfg, layout, estimate, progress))) return exit_input;
#endif
  CommBackend comm = CommBackend::mpi;
  try {  // every rank reaches the same verdict from the same reduced figures
    comm = parallel::select_comm_backend(cfg.parallel.comm, parallel::nccl_built(),
                                         parallel::ranks_per_gpu(MPI_COMM_WORLD));
  } catch (const InputError& e) {
    if (world_rank() == 0) std::cerr << "moeproxy: input error: " << e.what() << "\n";
    return exit_input;
  }
  parallel::Communicator world(MPI_COMM_WORLD, "world");
  if (progress)
    *progress << "[moeproxy] " << cfg.deck_path << ": " << layout.describe() << " on " << world.size()
              << " ranks, " << describe_backend() << ", communication " << to_string(comm) << "\n"
              << std::flush;

  if (progress && weights) *progress << "[moeproxy] weights: " << weights->describe() << "\n" << std::flush;
  const VerificationPlan plan = plan_verification(cfg, layout);
  const bool keep_outputs = plan.sample > 0 || cfg.output.dump_hidden;
  parallel::RunOutput out = parallel::run_forward(cfg, layout, comm, world, keep_outputs, progress, weights.get());
  verify(cfg, layout, out, world, weights.get(), plan, out.summary);
  io::ReportInput report = reduce_for_report(out, world);
  const bool balanced = out.balance.threshold > 0.0;
  if (balanced && world.rank() == 0) out.balance.suggestion = suggest_split(cfg, world.size());
  if (balanced) report.balance = &out.balance;

  io::RunInfo info;
  info.app_version = moeproxy::app::version();
  info.git_sha = moeproxy::app::git_sha();
  info.command_line = command_line(argc, argv);
  std::ostringstream kokkos_config;
  Kokkos::print_configuration(kokkos_config);
  info.kokkos_config = kokkos_config.str();
  info.layout = layout.describe();
  info.comm_backend = to_string(out.comm_backend);
  info.host = host_name();
  info.device = describe_backend();
  for (const CommRecord& r : world.records()) out.metrics.comm.push_back(r);
  io::ExpertCounts experts;
  if (cfg.model.is_moe()) {
    experts.layers = cfg.model.layers;
    experts.experts = cfg.model.experts;
    experts.tokens = out.expert_tokens;
  }
  io::HiddenDump dump;
  if (cfg.output.dump_hidden) {
    dump.batch_offset = out.slice.begin;
    // Tensor-parallel peers hold copies of the owner's rows: the owner writes them.
    // Moved, not copied: the pre-flight counts these buffers once.
    if (out.owns_outputs) {
      dump.batch_count = out.slice.count;
      dump.prefill = std::move(out.hidden_prefill);
      dump.decode = std::move(out.hidden_decode);
    }
  }
  io::write_results(MPI_COMM_WORLD, cfg.output.file, cfg, info, out.metrics, out.summary, experts,
                    cfg.output.dump_hidden ? &dump : nullptr, balanced ? &out.balance : nullptr);

  if (world.rank() == 0) {
    report.app_version = moeproxy::app::version();
    report.git_sha = moeproxy::app::git_sha();
    report.backend = describe_backend();
    report.layout = layout.describe();
    report.comm_backend = to_string(out.comm_backend);
    report.output_file = cfg.output.file;
    report.ranks = world.size();
    io::print_report(std::cout, cfg, out.summary, report);
  }
  return out.summary.verification == "FAIL" ? exit_failed : exit_ok;
}

int check_command(const Options& opt) {
  RunConfig cfg;
  if (!load_config(opt, cfg)) return exit_input;
  if (world_rank() != 0) return exit_ok;
  try {
    const parallel::RankLayout layout = parallel::RankLayout::build(cfg, opt.ranks);
    std::cout << "deck " << opt.deck << " is valid for " << opt.ranks << " ranks (" << layout.describe() << ")\n";
    std::cout << "rank map:\n" << layout.rank_map();
    std::cout << "memory estimate per rank (" << to_string(cfg.model.precision)
              << (cfg.model.precision == Precision::fp16 ? ": binary16 weights and kv cache" : "") << "):\n";
    for (int r = 0; r < opt.ranks; ++r) {
      const MemoryEstimate e = layout.memory_of(r);
      std::printf("  rank %d: weights %.1f MiB, kv cache %.1f MiB, activations %.1f MiB, total %.1f MiB\n", r,
                  e.weights / 1048576.0, e.kv_cache / 1048576.0, e.activations / 1048576.0, e.total() / 1048576.0);
    }
    if (!cfg.model.checkpoint.empty()) (void)io::open_checkpoint(cfg.model.checkpoint, cfg.model);
    // A deck describing a planned deployment is valid even where this version cannot run it yet.
    if (const std::string e = check_implemented(cfg); !e.empty())
      std::cout << "note: moeproxy run refuses this deck in this version: " << e << "\n";
  } catch (const InputError& e) {
    std::cerr << "moeproxy: input error: " << e.what() << "\n";
    return exit_input;
  }
  return exit_ok;
}

// The deck's generated weights as a checkpoint (docs/checkpoint.md), written by rank 0: a
// run from it must equal the run from the generated weights bit for bit.
int export_command(const Options& opt, const std::string& out_path) {
  RunConfig cfg;
  if (!load_config(opt, cfg)) return exit_input;
  if (world_rank() != 0) return exit_ok;
  if (!cfg.model.checkpoint.empty()) {
    std::cerr << "moeproxy: input error: export-checkpoint writes generated weights, but the deck sets model.checkpoint = \""
              << cfg.model.checkpoint << "\"\n";
    return exit_input;
  }
  const GeneratedWeights generated(cfg.model);
  io::write_checkpoint(out_path, cfg.model, generated);
  std::cout << "wrote " << out_path << " (" << generated.describe() << ")\n";
  return exit_ok;
}

int info_command(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (world_rank() != 0) return exit_ok;
  char mpi_version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(mpi_version, &len);
  std::cout << "moeproxy " << moeproxy::app::version() << " (git " << moeproxy::app::git_sha() << ")\n"
            << "execution space: " << describe_backend() << "\n"
            << "host: " << host_name() << "\n"
            << "MPI ranks: " << size << "\n"
            << "MPI library: " << std::string(mpi_version, len).substr(0, std::string(mpi_version, len).find('\n')) << "\n"
            << "Kokkos configuration:\n";
  Kokkos::print_configuration(std::cout);
  return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int rank = world_rank();
  report_fatal_signals(rank);

  CLI::App app{
      "moeproxy: a distributed transformer / Mixture-of-Experts inference proxy.\n"
      "Runs a real forward pass (prefill + decode) under the rank layout of a TOML deck,\n"
      "verifies it against a reference and writes timings, memory and communication to HDF5.\n"
      "Exit codes: 0 success (PASS or verification skipped), 1 verification FAIL or run-time\n"
      "error, 2 bad input (deck, override, layout, command line)."};
  app.set_version_flag("--version", std::string("moeproxy ") + moeproxy::app::version() + " (git " + moeproxy::app::git_sha() + ")");
  app.require_subcommand(1);
  Options opt;
  auto* run = app.add_subcommand("run", "Run a deck: prefill, decode, verification, HDF5 results, report.\n"
                                        "Launch with mpiexec -n N for N ranks.");
  run->add_option("deck", opt.deck, "TOML input deck (see docs/deck.md)")->required();
  run->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  run->add_flag("!--no-preflight", opt.preflight,
                "Skip the memory pre-flight (which refuses runs whose estimated memory per rank "
                "exceeds the host's or GPU's share)");
  auto* check = app.add_subcommand("check", "Validate a deck and print the rank map and memory per rank, "
                                            "without running it");
  check->add_option("deck", opt.deck, "TOML input deck")->required();
  check->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  check->add_option("--ranks", opt.ranks, "Number of ranks to check the layout for")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  auto* info = app.add_subcommand("info", "Print versions, the Kokkos configuration, devices and MPI ranks");
  app::PredictOptions predict_opt;
  auto* predict = app::add_predict(app, predict_opt);
  app::CalibrateOptions calibrate_opt;
  auto* calibrate = app::add_calibrate(app, calibrate_opt);
  std::string export_path;
  auto* export_ckpt = app.add_subcommand("export-checkpoint",
                                         "Write the deck's generated weights as an HDF5 checkpoint "
                                         "(docs/checkpoint.md) for model.checkpoint");
  export_ckpt->add_option("deck", opt.deck, "TOML input deck")->required();
  export_ckpt->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  export_ckpt->add_option("--out", export_path, "Checkpoint file to write")->required();
  moeproxy::bench::Options bench_opt;
  auto* bench = moeproxy::bench::add_subcommand(app, bench_opt);
  app.footer("Deck keys:\n" + io::deck_keys_help());

  int code = exit_ok;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::ostringstream out, err;
    const int cli_code = app.exit(e, out, err);
    if (rank == 0) {
      std::cout << out.str();
      std::cerr << err.str();
    }
    MPI_Finalize();
    return cli_code == 0 ? exit_ok : exit_input;
  }

  try {
    if (*run) code = run_command(opt, argc, argv);
    else if (*check) code = check_command(opt);
    else if (*info) code = info_command(argc, argv);
    else if (*predict) code = app::predict_command(predict_opt, argc, argv);
    else if (*calibrate) code = app::calibrate_command(calibrate_opt, argc, argv);
    else if (*export_ckpt) code = export_command(opt, export_path);
    else if (*bench) code = moeproxy::bench::run(bench_opt, argc, argv);
  } catch (const InputError& e) {
    std::cerr << "moeproxy: input error on rank " << rank << ": " << e.what() << "\n";
    MPI_Abort(MPI_COMM_WORLD, exit_input);
  } catch (const std::exception& e) {
    std::cerr << "moeproxy: error on rank " << rank << ": " << e.what() << "\n";
    MPI_Abort(MPI_COMM_WORLD, exit_failed);
  }
  MPI_Finalize();
  return code;
}
