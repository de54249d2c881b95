// The results file at 1, 2 and 4 ranks: every rank writes known values, rank 0 reads them
// back and checks each one, so a wrong hyperslab offset or a lost row shows up as a value.

#include <hdf5.h>
#include <mpi.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "moeproxy/io/results.hpp"

using namespace moeproxy;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

constexpr int layers = 3, experts = 4, prompt = 5, decode_steps = 2, hidden = 6;

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// A directory all ranks see, chosen by rank 0 and removed when the test case ends. The barrier
// in the destructor keeps the ranks in step even when a check on rank 0 fails.
class SharedTempDir {
 public:
  SharedTempDir() {
    std::string name;
    if (world_rank() == 0) {
      std::string pattern = (fs::temp_directory_path() / "moeproxy-results-XXXXXX").string();
      REQUIRE(mkdtemp(pattern.data()) != nullptr);
      name = pattern;
    }
    unsigned long length = name.size();
    MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG, 0, MPI_COMM_WORLD);
    name.resize(length);
    MPI_Bcast(name.data(), static_cast<int>(length), MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = name;
  }
  ~SharedTempDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    std::error_code ignored;
    if (world_rank() == 0) fs::remove_all(path_, ignored);
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

RunConfig make_config(int batch, const std::string& deck = "[model]\nlayers = 3 # \xc3\xa9t\xc3\xa9\n") {
  RunConfig cfg;
  cfg.model.layers = layers;
  cfg.model.hidden = hidden;
  cfg.model.experts = experts;
  cfg.workload.batch = batch;
  cfg.workload.prompt = prompt;
  cfg.workload.decode_steps = decode_steps;
  cfg.deck_text = deck;
  return cfg;
}

std::string host_of(int rank) { return "node" + std::string(static_cast<std::size_t>(rank) * 3, 'x'); }
std::string device_of(int rank) { return rank % 2 ? "cpu" : "NVIDIA H100 80GB HBM3 #" + std::to_string(rank); }

io::RunInfo make_info(int rank) {
  io::RunInfo info;
  info.app_version = "0.1.0";
  info.git_sha = "0123456789ab";
  info.command_line = "moeproxy run --set parallel.dp=4 deck.toml";
  info.kokkos_config = "Kokkos 3.4.1, Serial";
  info.layout = "dp=" + std::to_string(world_size());
  info.comm_backend = "nccl";
  info.host = host_of(rank);
  info.device = device_of(rank);
  return info;
}

RunSummary make_summary() {
  RunSummary s;
  s.prefill_tokens_per_s = 1234.5;
  s.ttft_s = 0.125;
  s.tpot_s = 0.0625;
  s.decode_tokens_per_s = 321.25;
  s.mfu = 0.375;
  s.peak_flops = 9.89e14;
  s.comm_fraction = 0.25;
  s.comm_seconds_raw = 1.5;
  s.expert_imbalance = 0.75;
  s.dropped_tokens = (1ull << 40) + 3;
  s.verification = "PASS";
  s.max_rel_error = 3.5e-7;
  s.tolerance = 1e-4;
  s.verification_note = "2 sequences sampled";
  s.comm_compression = "int8";
  s.compression_tolerance = 0.03125;
  s.comm_bytes_saved = (1ull << 35) + 5;
  return s;
}

double prefill_time(int rank, int layer, int phase) { return rank * 1000.0 + layer * 100.0 + phase + 0.25; }
double decode_time(int rank, int layer, int phase) { return rank * 1000.0 + layer * 100.0 + phase + 0.5; }
std::uint64_t memory_bytes(int rank, int kind) { return (1ull << 36) + rank * 100ull + kind; }

// Known comm records: allreduce@tp everywhere (twice on rank 0, to be summed), alltoallv@ep
// on even ranks (compressed: 4x the bytes uncompressed), send@pp on the last rank only.
// The allreduce's nccl-tests bytes make algbw 4 and busbw 6 B/s on every rank but rank 0.
std::vector<CommRecord> make_comm(int rank, int size) {
  std::vector<CommRecord> records{{"allreduce", "tp", size, 10ull + rank, (1ull << 33) + rank, 0.5 * rank,
                                   2ull * rank, 3ull * rank}};
  if (rank == 0) records.push_back({"allreduce", "tp", size, 5, 7, 0.25, 1, 2});
  if (rank % 2 == 0) records.push_back({"alltoallv", "ep", 2, 3, 1000ull * rank, 1.0 + rank, 0, 0, 4000ull * rank});
  if (rank == size - 1 && size > 1) records.push_back({"send", "pp", 2, 1, 64, 0.125});
  return records;
}

RankMetrics make_metrics(int rank, int size) {
  RankMetrics m;
  m.prefill = PhaseTable(layers);
  m.decode = PhaseTable(layers);
  for (int l = 0; l < layers; ++l) {
    for (int p = 0; p < phase_count; ++p) {
      m.prefill.add(l, static_cast<Phase>(p), prefill_time(rank, l, p));
      m.decode.add(l, static_cast<Phase>(p), decode_time(rank, l, p));
    }
  }
  for (int k = 0; k < memory_kind_count; ++k) m.memory[k] = memory_bytes(rank, k);
  m.comm = make_comm(rank, size);
  m.prefill_seconds = 2.0 + rank;
  m.decode_seconds = 3.0 + rank;
  for (int step = 0; step < decode_steps; ++step) m.decode_step_seconds.push_back(0.5 * step + rank);
  m.prefill_flops = 1e12 * (rank + 1);
  m.decode_flops = 1e9 * (rank + 1);
  return m;
}

io::ExpertCounts make_experts() {
  io::ExpertCounts counts{layers, experts, {}};
  for (int l = 0; l < layers; ++l)
    for (int e = 0; e < experts; ++e) counts.tokens.push_back((1ull << 35) + 7ull * l + e);
  return counts;
}

// The `owner` term lets a test see which rank wrote a row.
float hidden_value(int row, int pos, int h, int stage, int owner = 0) {
  return static_cast<float>(owner * 100000 + row * 1000 + pos * 10 + h) + 0.5f * stage;
}

io::HiddenDump make_dump(int offset, int count, int owner = 0) {
  io::HiddenDump dump{offset, count, {}, {}};
  for (int row = offset; row < offset + count; ++row) {
    for (int pos = 0; pos < prompt; ++pos)
      for (int h = 0; h < hidden; ++h) dump.prefill.push_back(hidden_value(row, pos, h, 0, owner));
    for (int step = 0; step < decode_steps; ++step)
      for (int h = 0; h < hidden; ++h) dump.decode.push_back(hidden_value(row, step, h, 1, owner));
  }
  return dump;
}

// Writes a complete file with the standard values above and the given dump.
void write_standard(const std::string& path, int batch, const io::HiddenDump* dump,
                    const std::string& deck = "[model]\nlayers = 3 # \xc3\xa9t\xc3\xa9\n") {
  const int rank = world_rank(), size = world_size();
  const RunConfig cfg = make_config(batch, deck);
  io::write_results(MPI_COMM_WORLD, path, cfg, make_info(rank), make_metrics(rank, size), make_summary(),
                    make_experts(), dump);
}

std::size_t at(int r, int l, int p) {
  return (static_cast<std::size_t>(r) * layers + l) * phase_count + p;
}

}  // namespace

TEST_CASE("write_results writes every rank's values where read_results finds them", "[results][mpi]") {
  const int rank = world_rank(), size = world_size();
  SharedTempDir dir;
  const std::string path = (dir.path() / "run.h5").string();

  // Five rows spread unevenly over all ranks but the last, which owns none (unless alone).
  const int batch = 5, holders = size > 1 ? size - 1 : 1;
  const int begin = rank < holders ? rank * batch / holders : 0;
  const int end = rank < holders ? (rank + 1) * batch / holders : 0;
  const io::HiddenDump dump = make_dump(begin, end - begin);
  write_standard(path, batch, &dump);

  if (rank != 0) return;
  CHECK(fs::exists(path));
  CHECK_FALSE(fs::exists(path + ".partial"));
  const io::ResultsFile f = io::read_results(path);
  CHECK(f.complete);
  CHECK(f.schema_version == 1);
  CHECK(f.deck == make_config(batch).deck_text);
  CHECK(f.ranks == size);
  CHECK(f.app_version == "0.1.0");
  CHECK(f.git_sha == "0123456789ab");
  CHECK(f.command_line == "moeproxy run --set parallel.dp=4 deck.toml");
  CHECK(f.kokkos_config == "Kokkos 3.4.1, Serial");
  CHECK(f.layout == "dp=" + std::to_string(size));
  CHECK(f.comm_backend == "nccl");
  CHECK_FALSE(f.predicted);
  REQUIRE(f.hosts.size() == static_cast<std::size_t>(size));
  REQUIRE(f.devices.size() == static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    CHECK(f.hosts[r] == host_of(r));
    CHECK(f.devices[r] == device_of(r));
  }

  const RunSummary expected = make_summary();
  CHECK(f.summary.prefill_tokens_per_s == expected.prefill_tokens_per_s);
  CHECK(f.summary.ttft_s == expected.ttft_s);
  CHECK(f.summary.tpot_s == expected.tpot_s);
  CHECK(f.summary.decode_tokens_per_s == expected.decode_tokens_per_s);
  CHECK(f.summary.mfu == expected.mfu);
  CHECK(f.summary.peak_flops == expected.peak_flops);
  CHECK(f.summary.comm_fraction == expected.comm_fraction);
  CHECK(f.summary.comm_seconds_raw == expected.comm_seconds_raw);
  CHECK(f.summary.expert_imbalance == expected.expert_imbalance);
  CHECK(f.summary.dropped_tokens == expected.dropped_tokens);
  CHECK(f.summary.verification == "PASS");
  CHECK(f.summary.max_rel_error == expected.max_rel_error);
  CHECK(f.summary.tolerance == expected.tolerance);
  CHECK(f.summary.verification_note == expected.verification_note);
  CHECK(f.summary.comm_compression == expected.comm_compression);
  CHECK(f.summary.compression_tolerance == expected.compression_tolerance);
  CHECK(f.summary.comm_bytes_saved == expected.comm_bytes_saved);

  REQUIRE(f.phases.size() == static_cast<std::size_t>(phase_count));
  CHECK(f.phases[0] == "norm");
  CHECK(f.phases[1] == "attn_qkv");
  CHECK(f.phases[phase_count - 1] == "wait");
  CHECK(f.layers == layers);
  REQUIRE(f.prefill_timing.size() == static_cast<std::size_t>(size) * layers * phase_count);
  REQUIRE(f.decode_timing.size() == f.prefill_timing.size());
  for (int r = 0; r < size; ++r) {
    for (int l = 0; l < layers; ++l) {
      for (int p = 0; p < phase_count; ++p) {
        CHECK(f.prefill_timing[at(r, l, p)] == prefill_time(r, l, p));
        CHECK(f.decode_timing[at(r, l, p)] == decode_time(r, l, p));
      }
    }
  }
  REQUIRE(f.prefill_wall.size() == static_cast<std::size_t>(size));
  REQUIRE(f.decode_wall.size() == static_cast<std::size_t>(size));
  REQUIRE(f.decode_step_wall.size() == static_cast<std::size_t>(size) * decode_steps);
  REQUIRE(f.prefill_flops.size() == static_cast<std::size_t>(size));
  REQUIRE(f.decode_flops.size() == static_cast<std::size_t>(size));
  for (int r = 0; r < size; ++r) {
    CHECK(f.prefill_wall[r] == 2.0 + r);
    CHECK(f.decode_wall[r] == 3.0 + r);
    for (int step = 0; step < decode_steps; ++step) CHECK(f.decode_step_wall.at(r * decode_steps + step) == 0.5 * step + r);
    CHECK(f.prefill_flops[r] == 1e12 * (r + 1));
    CHECK(f.decode_flops[r] == 1e9 * (r + 1));
  }

  REQUIRE(f.memory_kinds.size() == static_cast<std::size_t>(memory_kind_count));
  CHECK(f.memory_kinds[1] == "kv_cache");
  CHECK(f.memory_kinds[memory_kind_count - 1] == "high_water");
  REQUIRE(f.memory_bytes.size() == static_cast<std::size_t>(size) * memory_kind_count);
  for (int r = 0; r < size; ++r)
    for (int k = 0; k < memory_kind_count; ++k) CHECK(f.memory_bytes[r * memory_kind_count + k] == memory_bytes(r, k));

  CHECK(f.experts.layers == layers);
  CHECK(f.experts.experts == experts);
  CHECK(f.experts.tokens == make_experts().tokens);

  std::vector<std::string> keys{"allreduce@tp", "alltoallv@ep"};
  if (size > 1) keys.push_back("send@pp");
  REQUIRE(f.comm_keys == keys);
  const std::size_t nk = keys.size();
  REQUIRE(f.comm_calls.size() == size * nk);
  REQUIRE(f.comm_bytes.size() == size * nk);
  REQUIRE(f.comm_seconds.size() == size * nk);
  REQUIRE(f.comm_algbw.size() == size * nk);
  REQUIRE(f.comm_busbw.size() == size * nk);
  CHECK(f.comm_group_size[0] == size);
  CHECK(f.comm_group_size[1] == 2);
  if (size > 1) CHECK(f.comm_group_size[2] == 2);
  for (int r = 0; r < size; ++r) {
    const std::size_t row = r * nk;
    CHECK(f.comm_calls[row] == 10ull + r + (r == 0 ? 5 : 0));
    CHECK(f.comm_bytes[row] == (1ull << 33) + r + (r == 0 ? 7 : 0));
    CHECK(f.comm_seconds[row] == 0.5 * r + (r == 0 ? 0.25 : 0.0));
    CHECK(f.comm_algbw[row] == 4.0);
    CHECK(f.comm_busbw[row] == (r == 0 ? 8.0 : 6.0));
    const bool even = r % 2 == 0;
    CHECK(f.comm_calls[row + 1] == (even ? 3u : 0u));
    CHECK(f.comm_bytes[row + 1] == (even ? 1000ull * r : 0u));
    CHECK(f.comm_uncompressed_bytes[row + 1] == (even ? 4000ull * r : 0u));
    CHECK(f.comm_seconds[row + 1] == (even ? 1.0 + r : 0.0));
    if (size > 1) {
      const bool last = r == size - 1;
      CHECK(f.comm_calls[row + 2] == (last ? 1u : 0u));
      CHECK(f.comm_bytes[row + 2] == (last ? 64u : 0u));
      CHECK(f.comm_seconds[row + 2] == (last ? 0.125 : 0.0));
    }
  }

  CHECK(f.batch == batch);
  CHECK(f.prompt == prompt);
  CHECK(f.decode_steps == decode_steps);
  CHECK(f.hidden == hidden);
  REQUIRE(f.hidden_prefill.size() == static_cast<std::size_t>(batch) * prompt * hidden);
  REQUIRE(f.hidden_decode.size() == static_cast<std::size_t>(batch) * decode_steps * hidden);
  std::size_t mismatches = 0;
  for (int row = 0; row < batch; ++row) {
    for (int pos = 0; pos < prompt; ++pos)
      for (int h = 0; h < hidden; ++h)
        mismatches += f.hidden_prefill[(row * prompt + pos) * hidden + h] != hidden_value(row, pos, h, 0);
    for (int step = 0; step < decode_steps; ++step)
      for (int h = 0; h < hidden; ++h)
        mismatches += f.hidden_decode[(row * decode_steps + step) * hidden + h] != hidden_value(row, step, h, 1);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("rows owned by several ranks come from the lowest owner; empty tables stay readable",
          "[results][mpi]") {
  const int rank = world_rank(), size = world_size();
  SharedTempDir dir;
  const std::string path = (dir.path() / "overlap.h5").string();

  // Rank r owns rows [r, r + 2) of a batch of size + 1: every row but the first and last twice.
  const int batch = size + 1;
  const io::HiddenDump dump = make_dump(rank, 2, rank);
  RankMetrics metrics = make_metrics(rank, size);
  metrics.comm.clear();
  io::write_results(MPI_COMM_WORLD, path, make_config(batch), make_info(rank), metrics, make_summary(),
                    io::ExpertCounts{}, &dump);

  if (rank != 0) return;
  const io::ResultsFile f = io::read_results(path);
  CHECK(f.complete);
  CHECK(f.experts.layers == 0);
  CHECK(f.experts.experts == 0);
  CHECK(f.experts.tokens.empty());
  CHECK(f.comm_keys.empty());
  CHECK(f.comm_calls.empty());
  CHECK(f.comm_seconds.empty());
  REQUIRE(f.batch == batch);
  std::size_t mismatches = 0;
  for (int row = 0; row < batch; ++row) {
    const int owner = row == 0 ? 0 : row - 1;
    for (int pos = 0; pos < prompt; ++pos)
      for (int h = 0; h < hidden; ++h)
        mismatches += f.hidden_prefill[(row * prompt + pos) * hidden + h] != hidden_value(row, pos, h, 0, owner);
    for (int step = 0; step < decode_steps; ++step)
      for (int h = 0; h < hidden; ++h)
        mismatches +=
            f.hidden_decode[(row * decode_steps + step) * hidden + h] != hidden_value(row, step, h, 1, owner);
  }
  CHECK(mismatches == 0);
}

TEST_CASE("write_results creates missing directories and replaces an older file", "[results][mpi]") {
  SharedTempDir dir;
  const std::string path = (dir.path() / "a" / "b" / "run.h5").string();
  write_standard(path, 1, nullptr, "first");
  // Longer than the 64 KiB an HDF5 attribute may hold inline.
  const std::string long_deck(100000, '#');
  write_standard(path, 1, nullptr, long_deck);
  if (world_rank() != 0) return;
  const io::ResultsFile f = io::read_results(path);
  CHECK(f.complete);
  CHECK(f.deck == long_deck);
  CHECK(f.hidden_prefill.empty());
  CHECK(f.batch == 0);
  CHECK_FALSE(fs::exists(path + ".partial"));
}

TEST_CASE("write_results fails on every rank, never on some only", "[results][mpi]") {
  const int rank = world_rank(), size = world_size();
  SharedTempDir dir;
  const fs::path blocker = dir.path() / "not-a-directory";
  const fs::path busy = dir.path() / "busy.h5";
  if (rank == 0) {
    std::ofstream(blocker) << "a file where a directory should be\n";
    fs::create_directory(busy.string() + ".partial");
  }
  MPI_Barrier(MPI_COMM_WORLD);

  SECTION("the directory cannot be created") {
    const std::string path = (blocker / "run.h5").string();
    REQUIRE_THROWS_WITH(write_standard(path, 1, nullptr), Contains(path) && Contains("rank 0"));
  }
  SECTION("the file cannot be created") {
    REQUIRE_THROWS_WITH(write_standard(busy.string(), 1, nullptr), Contains("H5Fcreate"));
    MPI_Barrier(MPI_COMM_WORLD);
    CHECK_FALSE(fs::exists(busy));
  }
  SECTION("one rank's dump has the wrong size") {
    const std::string path = (dir.path() / "bad-dump.h5").string();
    io::HiddenDump dump = make_dump(rank, 1);
    if (rank == size - 1) dump.decode.pop_back();
    REQUIRE_THROWS_WITH(write_standard(path, size, &dump),
                        Contains("rank " + std::to_string(size - 1)) && Contains("hidden-state dump"));
    MPI_Barrier(MPI_COMM_WORLD);
    CHECK_FALSE(fs::exists(path));
    CHECK_FALSE(fs::exists(path + ".partial"));
  }
  SECTION("one rank's phase table has the wrong number of layers") {
    RankMetrics metrics = make_metrics(rank, size);
    if (rank == size - 1) metrics.decode = PhaseTable(layers + 1);
    REQUIRE_THROWS_WITH(io::write_results(MPI_COMM_WORLD, (dir.path() / "bad.h5").string(), make_config(1),
                                          make_info(rank), metrics, make_summary(), make_experts(), nullptr),
                        Contains("decode phase table"));
  }
  SECTION("the dumped rows leave a gap in the batch") {
    const io::HiddenDump dump = make_dump(rank, 1);
    REQUIRE_THROWS_WITH(write_standard((dir.path() / "gap.h5").string(), size + 1, &dump),
                        Contains("no rank dumps hidden-state row " + std::to_string(size)));
  }
  SECTION("a dump lies outside the batch") {
    const io::HiddenDump dump = make_dump(rank == 0 ? size : rank, 1);
    REQUIRE_THROWS_WITH(write_standard((dir.path() / "outside.h5").string(), size, &dump),
                        Contains("outside the batch"));
  }
  // Unwinding closed every file it had opened: the next write starts from a clean library.
  CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0);
}

TEST_CASE("read_results tells missing, foreign and incomplete files apart", "[results]") {
  SharedTempDir dir;
  if (world_rank() != 0) return;
  const fs::path missing = dir.path() / "missing.h5";
  REQUIRE_THROWS_WITH(io::read_results(missing.string()), Contains("no such file") && Contains(missing.string()));

  const fs::path text = dir.path() / "text.h5";
  std::ofstream(text) << "not HDF5\n";
  REQUIRE_THROWS_WITH(io::read_results(text.string()), Contains("H5Fopen"));

  // Built with plain HDF5 calls: the files a crashed or foreign writer would leave.
  const fs::path foreign = dir.path() / "foreign.h5";
  const fs::path partial = dir.path() / "run.h5.partial";
  for (const fs::path& p : {foreign, partial}) {
    const hid_t file = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(file >= 0);
    if (p == partial) {
      const hid_t space = H5Screate(H5S_SCALAR);
      for (auto [name, value] : {std::pair<const char*, int>{"complete", 0}, {"schema_version", 1}}) {
        const hid_t attr = H5Acreate2(file, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
        REQUIRE(attr >= 0);
        REQUIRE(H5Awrite(attr, H5T_NATIVE_INT, &value) >= 0);
        REQUIRE(H5Aclose(attr) >= 0);
      }
      REQUIRE(H5Sclose(space) >= 0);
    }
    REQUIRE(H5Fclose(file) >= 0);
  }
  REQUIRE_THROWS_WITH(io::read_results(foreign.string()), Contains("not a moeproxy results file"));
  const io::ResultsFile f = io::read_results(partial.string());
  CHECK_FALSE(f.complete);
  CHECK(f.schema_version == 1);
}
