// moeproxy: the command-line driver. It parses, validates, picks the backend and hands the
// work to parallel/ and io/; no physics lives here.

#include <mpi.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <Kokkos_Core.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "moeproxy/core/reference.hpp"
#include "moeproxy/io/deck.hpp"
#include "moeproxy/io/report.hpp"
#include "moeproxy/io/results.hpp"
#include "moeproxy/parallel/engine.hpp"
#include "moeproxy_version.hpp"

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

std::string broadcast_string(std::string s) {
  int n = static_cast<int>(s.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  s.resize(n);
  MPI_Bcast(s.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  return s;
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

// The output file must be creatable before hours of compute are spent.
std::string check_output_writable(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) return "output.file=" + path + ": cannot create directory " + parent.string() + ": " + ec.message();
  const std::string probe = path + ".partial";
  std::ofstream f(probe);
  if (!f) return "output.file=" + path + ": cannot write in " + (parent.empty() ? std::string(".") : parent.string());
  f.close();
  fs::remove(probe, ec);
  return "";
}

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

void verify(const RunConfig& cfg, const parallel::RankLayout& layout, const parallel::RunOutput& out,
            parallel::Communicator& world, RunSummary& s) {
  const VerifyConfig& v = cfg.verify;
  const int sample = std::min(v.sample, cfg.workload.batch);
  s.tolerance = verification_tolerance(cfg.model.precision);
  if (v.mode == VerifyMode::none || sample == 0) {
    s.verification_note = "verification disabled";
    return;
  }
  if (cfg.model.is_moe() && cfg.model.capacity_factor > 0.0 && layout.world_size() > 1) {
    s.verification_note = "capacity_factor > 0: dropped tokens depend on how tokens are grouped";
    return;
  }
  const double cost = reference_flops(cfg.model, cfg.workload, sample);
  if (v.mode == VerifyMode::automatic && cost > auto_reference_flop_limit) {
    std::ostringstream note;
    note << "host reference would cost " << cost / 1e9 << " GFLOP; set verify.mode=reference to force it";
    s.verification_note = note.str();
    return;
  }
  const parallel::SampleOutputs got = parallel::gather_sample(cfg, layout, out, world, sample);
  double result[2] = {0.0, 0.0};  // max_rel_error, pass
  if (world.rank() == 0) {
    const ReferenceOutput ref = reference_forward(cfg.model, cfg.workload, 0, sample, cfg.workload.batch);
    result[0] = std::max(max_relative_error(got.prefill, ref.prefill), max_relative_error(got.decode, ref.decode));
    result[1] = result[0] <= s.tolerance ? 1.0 : 0.0;
  }
  world.broadcast(result, sizeof result, 0);
  s.max_rel_error = result[0];
  s.verification = result[1] > 0.0 ? "PASS" : "FAIL";
  s.verification_note = "host fp64 reference, " + std::to_string(sample) + " sequences";
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
  std::string error;
  try {
    (void)parallel::RankLayout::build(cfg, world_size);
  } catch (const InputError& e) {
    error = e.what();
  }
  if (error.empty() && world_rank() == 0) error = check_output_writable(cfg.output.file);
  if (!agree(error.empty())) {
    if (world_rank() == 0) std::cerr << "moeproxy: input error: " << error << "\n";
    return exit_input;
  }
  const parallel::RankLayout layout = parallel::RankLayout::build(cfg, world_size);

  Kokkos::ScopeGuard kokkos(argc, argv);
  parallel::Communicator world(MPI_COMM_WORLD, "world");
  std::ostream* progress = world.rank() == 0 ? &std::cout : nullptr;
  if (progress)
    *progress << "[moeproxy] " << cfg.deck_path << ": " << layout.describe() << " on " << world.size()
              << " ranks, " << describe_backend() << "\n" << std::flush;

  parallel::RunOutput out = parallel::run_forward(cfg, layout, world, progress);
  verify(cfg, layout, out, world, out.summary);
  io::ReportInput report = reduce_for_report(out, world);

  io::RunInfo info;
  info.app_version = MOEPROXY_VERSION;
  info.git_sha = MOEPROXY_GIT_SHA;
  info.command_line = command_line(argc, argv);
  std::ostringstream kokkos_config;
  Kokkos::print_configuration(kokkos_config);
  info.kokkos_config = kokkos_config.str();
  info.layout = layout.describe();
  info.host = host_name();
  info.device = describe_backend();
  out.metrics.comm = world.records();
  io::ExpertCounts experts;
  if (cfg.model.is_moe()) {
    experts.layers = cfg.model.layers;
    experts.experts = cfg.model.experts;
    experts.tokens = out.expert_tokens;
  }
  io::HiddenDump dump;
  if (cfg.output.dump_hidden) {
    dump.batch_offset = out.slice.begin;
    dump.batch_count = out.slice.count;
    dump.prefill = out.hidden_prefill;
    dump.decode = out.hidden_decode;
  }
  io::write_results(MPI_COMM_WORLD, cfg.output.file, cfg, info, out.metrics, out.summary, experts,
                    cfg.output.dump_hidden ? &dump : nullptr);

  if (world.rank() == 0) {
    report.app_version = MOEPROXY_VERSION;
    report.git_sha = MOEPROXY_GIT_SHA;
    report.backend = describe_backend();
    report.layout = layout.describe();
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
    const ModelConfig& m = cfg.model;
    std::cout << "deck " << opt.deck << " is valid for " << opt.ranks << " ranks (" << layout.describe() << ")\n";
    std::cout << "rank map:\n" << layout.rank_map();
    std::cout << "memory estimate per rank (fp32):\n";
    for (int r = 0; r < opt.ranks; ++r) {
      const MemoryEstimate e = estimate_memory(m, cfg.workload, layout.sequences_of(r).count);
      std::printf("  rank %d: weights %.1f MiB, kv cache %.1f MiB, activations %.1f MiB, total %.1f MiB\n", r,
                  e.weights / 1048576.0, e.kv_cache / 1048576.0, e.activations / 1048576.0, e.total() / 1048576.0);
    }
  } catch (const InputError& e) {
    std::cerr << "moeproxy: input error: " << e.what() << "\n";
    return exit_input;
  }
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
  std::cout << "moeproxy " << MOEPROXY_VERSION << " (git " << MOEPROXY_GIT_SHA << ")\n"
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

  CLI::App app{
      "moeproxy: a distributed transformer / Mixture-of-Experts inference proxy.\n"
      "Runs a real forward pass (prefill + decode) under the rank layout of a TOML deck,\n"
      "verifies it against a reference and writes timings, memory and communication to HDF5.\n"
      "Exit codes: 0 success (PASS or verification skipped), 1 verification FAIL or run-time\n"
      "error, 2 bad input (deck, override, layout, command line)."};
  app.set_version_flag("--version", std::string("moeproxy ") + MOEPROXY_VERSION + " (git " + MOEPROXY_GIT_SHA + ")");
  app.require_subcommand(1);
  Options opt;
  auto* run = app.add_subcommand("run", "Run a deck: prefill, decode, verification, HDF5 results, report.\n"
                                        "Launch with mpiexec -n N for N ranks.");
  run->add_option("deck", opt.deck, "TOML input deck (see docs/deck.md)")->required();
  run->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  auto* check = app.add_subcommand("check", "Validate a deck and print the rank map and memory per rank, "
                                            "without running it");
  check->add_option("deck", opt.deck, "TOML input deck")->required();
  check->add_option("--set", opt.sets, "Override a deck key: --set section.key=value (repeatable)");
  check->add_option("--ranks", opt.ranks, "Number of ranks to check the layout for")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  auto* info = app.add_subcommand("info", "Print versions, the Kokkos configuration, devices and MPI ranks");
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
