// Parallel HDF5 writer and serial reader of the results file (schema: docs/hdf5-schema.md).
//
// Error discipline: any step that can fail on some ranks only (bad inputs, the directory,
// the file, an HDF5 call) runs inside collective_step(), which agrees on the outcome with an
// MPI_Allreduce and then throws the same message on every rank. Ranks therefore leave in
// step, and the RAII handles close in the same order everywhere (H5Fclose is collective).

#include "moeproxy/io/results.hpp"

#include "hdf5_support.hpp"

#include <hdf5.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace moeproxy::io {
namespace {

using hdf5::Handle;
using hdf5::QuietHdf5Errors;
using hdf5::where;

void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  throw std::runtime_error(std::string(call) + " failed at " + where(file, line) + ": " + std::string(text, length));
}
#define MOEPROXY_MPI(call) mpi_check((call), #call, __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// MPI helpers

int comm_rank(MPI_Comm comm) {
  int rank = 0;
  MOEPROXY_MPI(MPI_Comm_rank(comm, &rank));
  return rank;
}

int comm_size(MPI_Comm comm) {
  int size = 0;
  MOEPROXY_MPI(MPI_Comm_size(comm, &size));
  return size;
}

// Runs a step that may fail on some ranks only; if it failed anywhere, every rank throws the
// message of the lowest failing rank.
template <class Step>
void collective_step(MPI_Comm comm, const std::string& what, Step&& step) {
  bool failed = false;
  std::string error;
  try {
    step();
  } catch (const std::exception& e) {
    failed = true;
    error = e.what();
  }
  const int mine = failed ? comm_rank(comm) : INT_MAX;
  int first = INT_MAX;
  MOEPROXY_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == INT_MAX) return;
  unsigned long length = error.size();
  MOEPROXY_MPI(MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG, first, comm));
  error.resize(length);
  MOEPROXY_MPI(MPI_Bcast(error.data(), static_cast<int>(length), MPI_CHAR, first, comm));
  throw std::runtime_error(what + " failed on rank " + std::to_string(first) + ": " + error);
}

void bcast(MPI_Comm comm, std::string& text) {
  unsigned long length = text.size();
  MOEPROXY_MPI(MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG, 0, comm));
  text.resize(length);
  MOEPROXY_MPI(MPI_Bcast(text.data(), static_cast<int>(length), MPI_CHAR, 0, comm));
}

void bcast(MPI_Comm comm, double& value) { MOEPROXY_MPI(MPI_Bcast(&value, 1, MPI_DOUBLE, 0, comm)); }
void bcast(MPI_Comm comm, int& value) { MOEPROXY_MPI(MPI_Bcast(&value, 1, MPI_INT, 0, comm)); }
void bcast(MPI_Comm comm, std::uint64_t& value) { MOEPROXY_MPI(MPI_Bcast(&value, 1, MPI_UINT64_T, 0, comm)); }

std::vector<std::string> allgather(MPI_Comm comm, const std::string& mine) {
  const int size = comm_size(comm);
  const int length = static_cast<int>(mine.size());
  std::vector<int> lengths(size), offsets(size, 0);
  MOEPROXY_MPI(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, comm));
  for (int r = 1; r < size; ++r) offsets[r] = offsets[r - 1] + lengths[r - 1];
  std::string all(static_cast<std::size_t>(offsets[size - 1] + lengths[size - 1]), '\0');
  MOEPROXY_MPI(MPI_Allgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(),
                              MPI_CHAR, comm));
  std::vector<std::string> out(size);
  for (int r = 0; r < size; ++r) out[r] = all.substr(offsets[r], lengths[r]);
  return out;
}

// ---------------------------------------------------------------------------------------
// What the file holds beyond the caller's per-rank data, agreed across ranks before writing.

// Rank 0's copy of everything written as attributes or by rank 0 alone: HDF5 requires
// identical metadata from all ranks, and a caller bug must not corrupt the file.
struct Shared {
  std::string deck, app_version, git_sha, command_line, kokkos_config, layout, comm_backend;
  int predicted = 0, warmup = 0;
  int layers = 0, batch = 0, prompt = 0, decode_steps = 0, hidden = 0;
  int expert_layers = 0, experts = 0;
  RunSummary summary;
};

Shared share_from_root(MPI_Comm comm, const RunConfig& cfg, const RunInfo& info, const RunSummary& summary,
                       const ExpertCounts& experts) {
  Shared s{cfg.deck_text, info.app_version, info.git_sha, info.command_line, info.kokkos_config, info.layout,
           info.comm_backend,
           info.predicted ? 1 : 0, cfg.workload.warmup, cfg.model.layers, cfg.workload.batch, cfg.workload.prompt,
           cfg.workload.decode_steps, cfg.model.hidden, experts.layers, experts.experts, summary};
  for (std::string* text : {&s.deck, &s.app_version, &s.git_sha, &s.command_line, &s.kokkos_config, &s.layout,
                            &s.comm_backend,
                            &s.summary.verification, &s.summary.verification_note, &s.summary.comm_compression})
    bcast(comm, *text);
  for (int* value : {&s.predicted, &s.warmup, &s.layers, &s.batch, &s.prompt, &s.decode_steps, &s.hidden, &s.expert_layers,
                     &s.experts})
    bcast(comm, *value);
  RunSummary& m = s.summary;
  for (double* value : {&m.prefill_tokens_per_s, &m.ttft_s, &m.tpot_s, &m.decode_tokens_per_s, &m.mfu,
                        &m.peak_flops, &m.comm_fraction, &m.comm_seconds_raw, &m.comm_exposed_seconds,
                        &m.comm_hidden_seconds, &m.expert_imbalance, &m.max_rel_error, &m.tolerance,
                        &m.compression_tolerance})
    bcast(comm, *value);
  bcast(comm, m.dropped_tokens);
  bcast(comm, m.comm_bytes_saved);
  FailoverSummary& f = m.failover;
  int ran = f.ran ? 1 : 0;
  for (int* value : {&ran, &f.fail_rank, &f.fail_step, &f.takeover_rank, &f.sequences}) bcast(comm, *value);
  for (double* value : {&f.recovery_s, &f.tokens_per_s_before, &f.tokens_per_s_after}) bcast(comm, *value);
  f.ran = ran != 0;
  return s;
}

// The union over ranks of "operation@group" keys, and this rank's row of the table.
struct CommTable {
  std::vector<std::string> keys;  // sorted
  std::vector<std::uint64_t> calls, bytes, uncompressed_bytes;  // [local rank, key]
  std::vector<double> seconds, hidden;
  std::vector<double> algbw, busbw;  // bytes/s, 0 for a key this rank spent no time in
  std::vector<int> group_size;  // the largest any rank reported, per key
};

// The table's rows are those of `locals`, the ranks this process writes (one in a measured
// run, all of them in a predicted one).
CommTable gather_comm(MPI_Comm comm, const std::vector<const RankMetrics*>& locals) {
  std::vector<std::map<std::string, CommRecord>> mine(locals.size());  // a key recorded twice on one rank is summed
  std::set<std::string> local_keys;
  for (std::size_t i = 0; i < locals.size(); ++i)
    for (const CommRecord& r : locals[i]->comm) {
      const std::string key = r.operation + "@" + r.group;
      CommRecord& sum = mine[i][key];
      sum.group_size = std::max(sum.group_size, r.group_size);
      sum.calls += r.calls;
      sum.bytes += r.bytes;
      sum.uncompressed_bytes += r.uncompressed_bytes;
      sum.alg_bytes += r.alg_bytes;
      sum.bus_bytes += r.bus_bytes;
      sum.seconds += r.seconds;
      sum.hidden_seconds += r.hidden_seconds;
      local_keys.insert(key);
    }
  // Keys travel NUL-separated: neither operation nor group names contain NUL.
  std::string packed;
  for (const std::string& key : local_keys) packed += key + '\0';
  std::set<std::string> keys;
  for (const std::string& from_rank : allgather(comm, packed)) {
    for (std::size_t begin = 0, end; begin < from_rank.size(); begin = end + 1) {
      end = from_rank.find('\0', begin);
      keys.insert(from_rank.substr(begin, end - begin));
    }
  }
  CommTable table;
  table.keys.assign(keys.begin(), keys.end());
  std::vector<int> local_size(table.keys.size(), 0);
  for (const auto& rank : mine) {
    for (std::size_t k = 0; k < table.keys.size(); ++k) {
      const auto found = rank.find(table.keys[k]);
      const CommRecord none{};
      const CommRecord& r = found == rank.end() ? none : found->second;
      table.calls.push_back(r.calls);
      table.bytes.push_back(r.bytes);
      table.uncompressed_bytes.push_back(r.uncompressed_bytes);
      table.seconds.push_back(r.seconds);
      table.hidden.push_back(r.hidden_seconds);
      table.algbw.push_back(r.seconds > 0.0 ? static_cast<double>(r.alg_bytes) / r.seconds : 0.0);
      table.busbw.push_back(r.seconds > 0.0 ? static_cast<double>(r.bus_bytes) / r.seconds : 0.0);
      local_size[k] = std::max(local_size[k], found == rank.end() ? 0 : r.group_size);
    }
  }
  table.group_size.resize(local_size.size());
  MOEPROXY_MPI(MPI_Allreduce(local_size.data(), table.group_size.data(), static_cast<int>(local_size.size()),
                             MPI_INT, MPI_MAX, comm));
  return table;
}

// A run of `count` rows copied from row `mem_first` of a buffer to row `file_first` of a dataset.
struct RowBlock {
  hsize_t mem_first, file_first, count;
};

struct HiddenRows {
  bool dumped = false;                 // some rank passed a dump
  std::vector<RowBlock> blocks;        // the rows this rank writes
  std::string error;                   // the same on all ranks: a row outside the batch or left out
};

// Rows owned by several ranks are written by the lowest of them; the rest by their owner.
HiddenRows plan_hidden_rows(MPI_Comm comm, int batch, const HiddenDump* dump) {
  const int rank = comm_rank(comm), size = comm_size(comm);
  const std::array<int, 3> mine{dump ? 1 : 0, dump ? dump->batch_offset : 0, dump ? dump->batch_count : 0};
  std::vector<std::array<int, 3>> all(size);
  MOEPROXY_MPI(MPI_Allgather(mine.data(), 3, MPI_INT, all.data(), 3, MPI_INT, comm));

  HiddenRows plan;
  std::vector<std::pair<int, int>> ranges;  // [begin, end) of every rank with rows
  for (int r = 0; r < size; ++r) {
    const auto [has, offset, count] = all[r];
    plan.dumped = plan.dumped || has;
    if (offset < 0 || count < 0 || offset > batch - count) {
      plan.error = "rank " + std::to_string(r) + " dumps hidden-state rows [" + std::to_string(offset) + ", " +
                   std::to_string(static_cast<long>(offset) + count) + ") outside the batch of " +
                   std::to_string(batch);
      return plan;
    }
    if (count > 0) ranges.emplace_back(offset, offset + count);
  }
  if (!plan.dumped) return plan;

  std::sort(ranges.begin(), ranges.end());
  int covered = 0;
  for (const auto& [begin, end] : ranges) {
    if (begin > covered) break;
    covered = std::max(covered, end);
  }
  if (covered < batch) {
    plan.error = "no rank dumps hidden-state row " + std::to_string(covered) + " of the batch of " +
                 std::to_string(batch);
    return plan;
  }

  const int begin = mine[1], end = mine[1] + mine[2];
  std::vector<std::pair<int, int>> lower;
  for (int r = 0; r < rank; ++r)
    if (all[r][2] > 0) lower.emplace_back(all[r][1], all[r][1] + all[r][2]);
  std::sort(lower.begin(), lower.end());
  int cursor = begin;
  auto take = [&](int until) {
    if (until > cursor)
      plan.blocks.push_back({static_cast<hsize_t>(cursor - begin), static_cast<hsize_t>(cursor),
                             static_cast<hsize_t>(until - cursor)});
  };
  for (const auto& [lo, hi] : lower) {
    if (lo >= end) break;
    take(lo);
    cursor = std::max(cursor, hi);
  }
  take(end);
  return plan;
}

// ---------------------------------------------------------------------------------------
// HDF5 types

template <class T>
struct H5Type;
template <>
struct H5Type<double> {
  static hid_t file() { return H5T_IEEE_F64LE; }
  static hid_t memory() { return H5T_NATIVE_DOUBLE; }
};
template <>
struct H5Type<float> {
  static hid_t file() { return H5T_IEEE_F32LE; }
  static hid_t memory() { return H5T_NATIVE_FLOAT; }
};
template <>
struct H5Type<std::uint64_t> {
  static hid_t file() { return H5T_STD_U64LE; }
  static hid_t memory() { return H5T_NATIVE_UINT64; }
};
template <>
struct H5Type<int> {
  static hid_t file() { return H5T_STD_I32LE; }
  static hid_t memory() { return H5T_NATIVE_INT; }
};

// Attributes hold variable-length strings (h5py reads them as str); datasets hold
// fixed-length ones, because parallel HDF5 cannot write variable-length data.
Handle string_type(std::size_t size) {
  Handle type(MOEPROXY_H5(H5Tcopy(H5T_C_S1)), H5Tclose);
  MOEPROXY_H5(H5Tset_size(type.id(), size));
  MOEPROXY_H5(H5Tset_cset(type.id(), H5T_CSET_UTF8));
  if (size != H5T_VARIABLE) MOEPROXY_H5(H5Tset_strpad(type.id(), H5T_STR_NULLTERM));
  return type;
}

// ---------------------------------------------------------------------------------------
// Writing

void write_attribute(hid_t loc, const char* name, hid_t file_type, hid_t memory_type, const void* value) {
  Handle space(MOEPROXY_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  Handle attr(MOEPROXY_H5(H5Acreate2(loc, name, file_type, space.id(), H5P_DEFAULT, H5P_DEFAULT)), H5Aclose);
  MOEPROXY_H5(H5Awrite(attr.id(), memory_type, value));
  MOEPROXY_H5(attr.close());
  MOEPROXY_H5(space.close());
}

template <class T>
void write_attribute(hid_t loc, const char* name, T value) {
  write_attribute(loc, name, H5Type<T>::file(), H5Type<T>::memory(), &value);
}

void write_attribute(hid_t loc, const char* name, const std::string& value) {
  Handle type = string_type(H5T_VARIABLE);
  const char* text = value.c_str();
  write_attribute(loc, name, type.id(), type.id(), &text);
  MOEPROXY_H5(type.close());
}

Handle create_group(hid_t file, const char* name) {
  return Handle(MOEPROXY_H5(H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), H5Gclose);
}

// Rows [first_row, first_row + rows) of every [rank, ...] dataset come from this process:
// its own rank in a measured run, every modelled rank in a predicted one.
class Writer {
 public:
  Writer(MPI_Comm comm, int first_row, int rows, int total_rows)
      : process_(comm_rank(comm)), first_row_(first_row), rows_(rows), size_(total_rows) {
    xfer_ = Handle(MOEPROXY_H5(H5Pcreate(H5P_DATASET_XFER)), H5Pclose);
    MOEPROXY_H5(H5Pset_dxpl_mpio(xfer_.id(), H5FD_MPIO_COLLECTIVE));
    // Every element is written by some rank, so filling datasets first would double the I/O.
    dcpl_ = Handle(MOEPROXY_H5(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
    MOEPROXY_H5(H5Pset_fill_time(dcpl_.id(), H5D_FILL_TIME_NEVER));
  }

  void close() {
    MOEPROXY_H5(dcpl_.close());
    MOEPROXY_H5(xfer_.close());
  }

  int size() const { return size_; }

  // Creates `name` with shape dims and writes this rank's blocks of rows of buf (buf_rows
  // rows of the same trailing shape); collective, also for ranks with no blocks.
  void write(hid_t loc, const char* name, hid_t file_type, hid_t memory_type, const std::vector<hsize_t>& dims,
             const void* buf, hsize_t buf_rows, const std::vector<RowBlock>& blocks, const char* units) {
    const int ndims = static_cast<int>(dims.size());
    Handle file_space(MOEPROXY_H5(H5Screate_simple(ndims, dims.data(), nullptr)), H5Sclose);
    Handle dset(MOEPROXY_H5(H5Dcreate2(loc, name, file_type, file_space.id(), H5P_DEFAULT, dcpl_.id(),
                                       H5P_DEFAULT)),
                H5Dclose);
    if (units) write_attribute(dset.id(), "units", std::string(units));

    std::vector<hsize_t> memory_dims = dims;
    memory_dims[0] = buf_rows;
    Handle memory_space(MOEPROXY_H5(H5Screate_simple(ndims, memory_dims.data(), nullptr)), H5Sclose);
    hsize_t row_elements = 1;
    for (int d = 1; d < ndims; ++d) row_elements *= dims[d];
    bool selected = false;
    for (const RowBlock& block : blocks) {
      if (block.count == 0 || row_elements == 0) continue;
      const H5S_seloper_t op = selected ? H5S_SELECT_OR : H5S_SELECT_SET;
      std::vector<hsize_t> start(ndims, 0), count = dims;
      count[0] = block.count;
      start[0] = block.file_first;
      MOEPROXY_H5(H5Sselect_hyperslab(file_space.id(), op, start.data(), nullptr, count.data(), nullptr));
      start[0] = block.mem_first;
      MOEPROXY_H5(H5Sselect_hyperslab(memory_space.id(), op, start.data(), nullptr, count.data(), nullptr));
      selected = true;
    }
    if (!selected) {
      MOEPROXY_H5(H5Sselect_none(file_space.id()));
      MOEPROXY_H5(H5Sselect_none(memory_space.id()));
    }
    // An empty dataset has no storage to write to (H5Dwrite fails with "addr overflow"); the
    // shape is the same on all ranks, so all of them skip the collective write together.
    if (row_elements * dims[0] > 0) {
      // HDF5 rejects a null buffer even for an empty selection.
      static const char nothing = 0;
      MOEPROXY_H5(H5Dwrite(dset.id(), memory_type, memory_space.id(), file_space.id(), xfer_.id(),
                           buf ? buf : &nothing));
    }
    MOEPROXY_H5(memory_space.close());
    MOEPROXY_H5(dset.close());
    MOEPROXY_H5(file_space.close());
  }

  // [rank, tail...]: each process writes its rows, `rows` of them back to back.
  template <class T>
  void per_rank(hid_t loc, const char* name, const std::vector<T>& rows, std::vector<hsize_t> tail,
                const char* units) {
    tail.insert(tail.begin(), static_cast<hsize_t>(size_));
    write(loc, name, H5Type<T>::file(), H5Type<T>::memory(), tail, rows.data(), static_cast<hsize_t>(rows_),
          own_rows(), units);
  }

  // Identical everywhere: rank 0 writes it all, the others take part with no rows.
  template <class T>
  void from_root(hid_t loc, const char* name, const std::vector<T>& data, const std::vector<hsize_t>& dims,
                 const char* units) {
    write(loc, name, H5Type<T>::file(), H5Type<T>::memory(), dims, data.data(), root_rows(dims), root_blocks(dims),
          units);
  }

  void strings_from_root(hid_t loc, const char* name, const std::vector<std::string>& strings) {
    std::size_t width = 1;
    for (const std::string& s : strings) width = std::max(width, s.size() + 1);
    const std::string packed = pack(strings, width);
    Handle type = string_type(width);
    const std::vector<hsize_t> dims{strings.size()};
    write(loc, name, type.id(), type.id(), dims, packed.data(), root_rows(dims), root_blocks(dims), nullptr);
    MOEPROXY_H5(type.close());
  }

  // The string width is agreed beforehand: all ranks must create the same dataset.
  void string_per_rank(hid_t loc, const char* name, const std::string& mine, std::size_t width) {
    const std::string packed = pack(std::vector<std::string>(static_cast<std::size_t>(rows_), mine), width);
    Handle type = string_type(width);
    write(loc, name, type.id(), type.id(), {static_cast<hsize_t>(size_)}, packed.data(), static_cast<hsize_t>(rows_),
          own_rows(), nullptr);
    MOEPROXY_H5(type.close());
  }

 private:
  std::vector<RowBlock> own_rows() const {
    return {{0, static_cast<hsize_t>(first_row_), static_cast<hsize_t>(rows_)}};
  }
  hsize_t root_rows(const std::vector<hsize_t>& dims) const { return process_ == 0 ? dims[0] : 0; }
  std::vector<RowBlock> root_blocks(const std::vector<hsize_t>& dims) const {
    if (process_ != 0) return {};
    return {{0, 0, dims[0]}};
  }
  static std::string pack(const std::vector<std::string>& strings, std::size_t width) {
    std::string packed(strings.size() * width, '\0');
    for (std::size_t i = 0; i < strings.size(); ++i) packed.replace(i * width, strings[i].size(), strings[i]);
    return packed;
  }

  int process_, first_row_, rows_, size_;
  Handle xfer_, dcpl_;
};

// The rows of `locals` back to back: what `row` gives for each (a value or a vector).
template <class Row>
auto gather(const std::vector<const RankMetrics*>& locals, Row row) {
  using Value = std::decay_t<decltype(row(*locals.front()))>;
  if constexpr (std::is_arithmetic_v<Value>) {
    std::vector<Value> out;
    for (const RankMetrics* r : locals) out.push_back(row(*r));
    return out;
  } else {
    Value out;
    for (const RankMetrics* r : locals) {
      const Value& v = row(*r);
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  }
}

std::string check_inputs(const Shared& s, const RankMetrics& local, const ExpertCounts& experts,
                         const HiddenDump* dump, int rank) {
  auto layers_mismatch = [&](const char* stage, const PhaseTable& table) {
    return std::string(stage) + " phase table has " + std::to_string(table.layers()) + " layers, the model " +
           std::to_string(s.layers);
  };
  if (local.prefill.layers() != s.layers) return layers_mismatch("prefill", local.prefill);
  if (local.decode.layers() != s.layers) return layers_mismatch("decode", local.decode);
  if (rank == 0 && (experts.layers < 0 || experts.experts < 0 ||
                    experts.tokens.size() != static_cast<std::size_t>(experts.layers) * experts.experts))
    return "expert counts hold " + std::to_string(experts.tokens.size()) + " values for " +
           std::to_string(experts.layers) + " layers x " + std::to_string(experts.experts) + " experts";
  if (dump) {
    const std::size_t rows = static_cast<std::size_t>(std::max(dump->batch_count, 0));
    const std::size_t prefill = rows * s.prompt * s.hidden, decode = rows * s.decode_steps * s.hidden;
    if (dump->prefill.size() != prefill || dump->decode.size() != decode)
      return "hidden-state dump of " + std::to_string(rows) + " rows holds " + std::to_string(dump->prefill.size()) +
             " prefill and " + std::to_string(dump->decode.size()) + " decode values, expected " +
             std::to_string(prefill) + " and " + std::to_string(decode) + " (rows x prompt|decode_steps x hidden)";
  }
  return {};
}

// The checks and trials are the same on every rank; the suggestion was made on rank 0.
void write_balance(MPI_Comm comm, hid_t root, Writer& w, const BalanceLog& log) {
  RankSplitSuggestion suggestion = log.suggestion;
  bcast(comm, suggestion.attn_ranks);
  bcast(comm, suggestion.tpot_s);
  bcast(comm, suggestion.current_attn_ranks);
  bcast(comm, suggestion.current_tpot_s);
  bcast(comm, suggestion.machine);
  bcast(comm, suggestion.note);
  Handle group = create_group(root, "balance");
  const hid_t g = group.id();
  write_attribute(g, "threshold", log.threshold);
  write_attribute(g, "interval", log.interval);
  write_attribute(g, "suggested_attn_ranks", suggestion.attn_ranks);
  write_attribute(g, "suggested_tpot_s", suggestion.tpot_s);
  write_attribute(g, "current_attn_ranks", suggestion.current_attn_ranks);
  write_attribute(g, "current_tpot_s", suggestion.current_tpot_s);
  write_attribute(g, "machine", suggestion.machine);
  write_attribute(g, "note", suggestion.note);

  const auto column = [&](hid_t loc, const char* name, auto field, const auto& rows, const char* units) {
    using Value = std::decay_t<decltype(field(rows.front()))>;
    std::vector<Value> values;
    for (const auto& r : rows) values.push_back(field(r));
    w.from_root(loc, name, values, {static_cast<hsize_t>(rows.size())}, units);
  };
  const auto strings = [&](hid_t loc, const char* name, auto field, const auto& rows) {
    std::vector<std::string> values;
    for (const auto& r : rows) values.push_back(field(r));
    w.strings_from_root(loc, name, values);
  };
  Handle checks = create_group(g, "checks");
  const std::vector<BalanceCheck>& c = log.checks;
  const hid_t cg = checks.id();
  column(cg, "step", [](const BalanceCheck& r) { return r.step; }, c, "steps");
  column(cg, "micro_batches", [](const BalanceCheck& r) { return r.micro_batches; }, c, nullptr);
  column(cg, "attention_busy", [](const BalanceCheck& r) { return r.attention_busy; }, c, "s");
  column(cg, "ffn_busy", [](const BalanceCheck& r) { return r.ffn_busy; }, c, "s");
  column(cg, "imbalance", [](const BalanceCheck& r) { return r.imbalance; }, c, nullptr);
  column(cg, "step_seconds", [](const BalanceCheck& r) { return r.step_seconds; }, c, "s");
  strings(cg, "action", [](const BalanceCheck& r) { return r.action; }, c);
  column(cg, "next_micro_batches", [](const BalanceCheck& r) { return r.next_micro_batches; }, c, nullptr);
  MOEPROXY_H5(checks.close());
  Handle trials = create_group(g, "trials");
  const std::vector<BalanceTrial>& t = log.trials;
  const hid_t tg = trials.id();
  column(tg, "step", [](const BalanceTrial& r) { return r.step; }, t, "steps");
  column(tg, "from_micro_batches", [](const BalanceTrial& r) { return r.from_micro_batches; }, t, nullptr);
  column(tg, "to_micro_batches", [](const BalanceTrial& r) { return r.to_micro_batches; }, t, nullptr);
  column(tg, "imbalance_before", [](const BalanceTrial& r) { return r.imbalance_before; }, t, nullptr);
  column(tg, "imbalance_after", [](const BalanceTrial& r) { return r.imbalance_after; }, t, nullptr);
  column(tg, "step_seconds_before", [](const BalanceTrial& r) { return r.step_seconds_before; }, t, "s");
  column(tg, "step_seconds_after", [](const BalanceTrial& r) { return r.step_seconds_after; }, t, "s");
  strings(tg, "verdict", [](const BalanceTrial& r) { return r.verdict; }, t);
  MOEPROXY_H5(trials.close());
  MOEPROXY_H5(group.close());
}

// `locals` are rows [first_row, first_row + locals.size()) of total_rows.
void write_file(MPI_Comm comm, const std::string& path, const RunConfig& cfg, const RunInfo& info,
                const std::vector<const RankMetrics*>& locals, int first_row, int total_rows,
                const RunSummary& summary, const ExpertCounts& experts, const HiddenDump* dump,
                const BalanceLog* balance) {
  const int rank = comm_rank(comm);
  const Shared s = share_from_root(comm, cfg, info, summary, experts);
  const CommTable comm_table = gather_comm(comm, locals);
  const HiddenRows rows = plan_hidden_rows(comm, s.batch, dump);
  std::array<unsigned long, 2> widths{info.host.size() + 1, info.device.size() + 1};
  MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, widths.data(), 2, MPI_UNSIGNED_LONG, MPI_MAX, comm));

  collective_step(comm, "checking the inputs", [&] {
    std::string error = rows.error;
    for (const RankMetrics* local : locals)
      if (error.empty()) error = check_inputs(s, *local, experts, dump, rank);
    if (!error.empty()) throw std::runtime_error(error);
  });

  if (const std::string error = results_path_error(path); !error.empty()) throw std::runtime_error(error);
  const std::filesystem::path target(path);
  const std::string partial = path + ".partial";
  collective_step(comm, "creating the directory", [&] {
    if (rank != 0 || !target.has_parent_path()) return;
    std::error_code ec;
    std::filesystem::create_directories(target.parent_path(), ec);
    if (ec) throw std::runtime_error(target.parent_path().string() + ": " + ec.message());
  });

  Handle file;
  std::optional<Writer> writer;
  collective_step(comm, "creating " + partial, [&] {
    Handle fapl(MOEPROXY_H5(H5Pcreate(H5P_FILE_ACCESS)), H5Pclose);
    MOEPROXY_H5(H5Pset_fapl_mpio(fapl.id(), comm, MPI_INFO_NULL));
    file = Handle(MOEPROXY_H5(H5Fcreate(partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id())), H5Fclose);
    MOEPROXY_H5(fapl.close());
    // First, so that a file cut short anywhere below already reads as incomplete.
    write_attribute(file.id(), "complete", 0);
    writer.emplace(comm, first_row, static_cast<int>(locals.size()), total_rows);
  });
  Writer& w = *writer;
  const hid_t root = file.id();

  collective_step(comm, "writing the root attributes", [&] {
    write_attribute(root, "schema_version", results_schema_version);
    write_attribute(root, "deck", s.deck);
    write_attribute(root, "app_version", s.app_version);
    write_attribute(root, "git_sha", s.git_sha);
    write_attribute(root, "command_line", s.command_line);
    write_attribute(root, "kokkos_config", s.kokkos_config);
    write_attribute(root, "layout", s.layout);
    write_attribute(root, "comm_backend", s.comm_backend);
    write_attribute(root, "mpi_size", w.size());
    write_attribute(root, "predicted", s.predicted);
    write_attribute(root, "warmup", s.warmup);
    w.string_per_rank(root, "hosts", info.host, widths[0]);
    w.string_per_rank(root, "devices", info.device, widths[1]);
  });

  collective_step(comm, "writing /summary", [&] {
    Handle group = create_group(root, "summary");
    const RunSummary& m = s.summary;
    const hid_t g = group.id();
    write_attribute(g, "prefill_tokens_per_s", m.prefill_tokens_per_s);
    write_attribute(g, "ttft_s", m.ttft_s);
    write_attribute(g, "tpot_s", m.tpot_s);
    write_attribute(g, "decode_tokens_per_s", m.decode_tokens_per_s);
    write_attribute(g, "mfu", m.mfu);
    write_attribute(g, "peak_flops", m.peak_flops);
    write_attribute(g, "comm_fraction", m.comm_fraction);
    write_attribute(g, "comm_seconds_raw", m.comm_seconds_raw);
    write_attribute(g, "comm_exposed_s", m.comm_exposed_seconds);
    write_attribute(g, "comm_hidden_s", m.comm_hidden_seconds);
    write_attribute(g, "expert_imbalance", m.expert_imbalance);
    write_attribute(g, "dropped_tokens", m.dropped_tokens);
    write_attribute(g, "verification", m.verification);
    write_attribute(g, "max_rel_error", m.max_rel_error);
    write_attribute(g, "tolerance", m.tolerance);
    write_attribute(g, "verification_note", m.verification_note);
    write_attribute(g, "comm_compression", m.comm_compression);
    write_attribute(g, "compression_tolerance", m.compression_tolerance);
    write_attribute(g, "comm_bytes_saved", m.comm_bytes_saved);
    MOEPROXY_H5(group.close());
  });

  if (s.summary.failover.ran) {
    collective_step(comm, "writing /failover", [&] {
      Handle group = create_group(root, "failover");
      const FailoverSummary& f = s.summary.failover;
      const hid_t g = group.id();
      write_attribute(g, "kind", std::string(failover_drill_kind));
      write_attribute(g, "fail_rank", f.fail_rank);
      write_attribute(g, "fail_step", f.fail_step);
      write_attribute(g, "takeover_rank", f.takeover_rank);
      write_attribute(g, "sequences", f.sequences);
      write_attribute(g, "recovery_s", f.recovery_s);
      write_attribute(g, "decode_tokens_per_s_before", f.tokens_per_s_before);
      write_attribute(g, "decode_tokens_per_s_after", f.tokens_per_s_after);
      MOEPROXY_H5(group.close());
    });
  }

  collective_step(comm, "writing /timing", [&] {
    Handle group = create_group(root, "timing");
    std::vector<std::string> phases;
    for (int p = 0; p < phase_count; ++p) phases.emplace_back(phase_name(static_cast<Phase>(p)));
    w.strings_from_root(group.id(), "phases", phases);
    const std::vector<hsize_t> tail{static_cast<hsize_t>(s.layers), static_cast<hsize_t>(phase_count)};
    w.per_rank(group.id(), "prefill", gather(locals, [](const RankMetrics& r) { return r.prefill.data(); }), tail, "s");
    w.per_rank(group.id(), "decode", gather(locals, [](const RankMetrics& r) { return r.decode.data(); }), tail, "s");
    w.per_rank(group.id(), "prefill_wall", gather(locals, [](const RankMetrics& r) { return r.prefill_seconds; }), {},
               "s");
    w.per_rank(group.id(), "decode_wall", gather(locals, [](const RankMetrics& r) { return r.decode_seconds; }), {},
               "s");
    for (const RankMetrics* r : locals)
      if (r->decode_step_seconds.size() != static_cast<std::size_t>(s.decode_steps))
        throw std::logic_error("timing/decode_step_wall: " + std::to_string(r->decode_step_seconds.size()) +
                               " steps timed for " + std::to_string(s.decode_steps));
    w.per_rank(group.id(), "decode_step_wall", gather(locals, [](const RankMetrics& r) { return r.decode_step_seconds; }),
               {static_cast<hsize_t>(s.decode_steps)}, "s");
    w.per_rank(group.id(), "comm_exposed",
               gather(locals, [](const RankMetrics& r) { return r.comm_exposed_seconds; }), {}, "s");
    w.per_rank(group.id(), "comm_hidden", gather(locals, [](const RankMetrics& r) { return r.comm_hidden_seconds; }),
               {}, "s");
    MOEPROXY_H5(group.close());
  });

  collective_step(comm, "writing /memory", [&] {
    Handle group = create_group(root, "memory");
    std::vector<std::string> kinds;
    for (int k = 0; k < memory_kind_count; ++k) kinds.emplace_back(memory_kind_name(static_cast<MemoryKind>(k)));
    w.strings_from_root(group.id(), "kinds", kinds);
    const std::vector<std::uint64_t> bytes = gather(locals, [](const RankMetrics& r) {
      return std::vector<std::uint64_t>(r.memory.begin(), r.memory.end());
    });
    w.per_rank(group.id(), "bytes", bytes, {static_cast<hsize_t>(memory_kind_count)}, "bytes");
    MOEPROXY_H5(group.close());
  });

  collective_step(comm, "writing /flops", [&] {
    Handle group = create_group(root, "flops");
    w.per_rank(group.id(), "prefill", gather(locals, [](const RankMetrics& r) { return r.prefill_flops; }), {}, "FLOP");
    w.per_rank(group.id(), "decode", gather(locals, [](const RankMetrics& r) { return r.decode_flops; }), {}, "FLOP");
    MOEPROXY_H5(group.close());
  });

  if (s.experts > 0) {
    collective_step(comm, "writing /experts", [&] {
      Handle group = create_group(root, "experts");
      w.from_root(group.id(), "tokens", experts.tokens,
                  {static_cast<hsize_t>(s.expert_layers), static_cast<hsize_t>(s.experts)}, "tokens");
      MOEPROXY_H5(group.close());
    });
  }

  collective_step(comm, "writing /comm", [&] {
    Handle group = create_group(root, "comm");
    const hsize_t keys = comm_table.keys.size();
    w.strings_from_root(group.id(), "keys", comm_table.keys);
    w.from_root(group.id(), "group_size", comm_table.group_size, {keys}, "ranks");
    w.per_rank(group.id(), "calls", comm_table.calls, {keys}, "calls");
    w.per_rank(group.id(), "bytes", comm_table.bytes, {keys}, "bytes");
    w.per_rank(group.id(), "uncompressed_bytes", comm_table.uncompressed_bytes, {keys}, "bytes");
    w.per_rank(group.id(), "seconds", comm_table.seconds, {keys}, "s");
    w.per_rank(group.id(), "hidden", comm_table.hidden, {keys}, "s");
    w.per_rank(group.id(), "algbw", comm_table.algbw, {keys}, "B/s");
    w.per_rank(group.id(), "busbw", comm_table.busbw, {keys}, "B/s");
    MOEPROXY_H5(group.close());
  });

  if (balance && balance->threshold > 0.0) {
    collective_step(comm, "writing /balance", [&] { write_balance(comm, root, w, *balance); });
  }

  if (rows.dumped) {
    collective_step(comm, "writing /output", [&] {
      Handle group = create_group(root, "output");
      const hsize_t mine = dump ? static_cast<hsize_t>(dump->batch_count) : 0;
      const auto batch = static_cast<hsize_t>(s.batch), hidden = static_cast<hsize_t>(s.hidden);
      w.write(group.id(), "hidden_prefill", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT,
              {batch, static_cast<hsize_t>(s.prompt), hidden}, dump ? dump->prefill.data() : nullptr, mine,
              rows.blocks, nullptr);
      w.write(group.id(), "hidden_decode", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT,
              {batch, static_cast<hsize_t>(s.decode_steps), hidden}, dump ? dump->decode.data() : nullptr, mine,
              rows.blocks, nullptr);
      MOEPROXY_H5(group.close());
    });
  }

  collective_step(comm, "completing " + partial, [&] {
    // Everything else reaches the disk before the flag does.
    MOEPROXY_H5(H5Fflush(root, H5F_SCOPE_GLOBAL));
    Handle attr(MOEPROXY_H5(H5Aopen(root, "complete", H5P_DEFAULT)), H5Aclose);
    const int complete = 1;
    MOEPROXY_H5(H5Awrite(attr.id(), H5T_NATIVE_INT, &complete));
    MOEPROXY_H5(attr.close());
    w.close();
    MOEPROXY_H5(file.close());
  });

  collective_step(comm, "renaming " + partial, [&] {
    if (rank != 0) return;
    std::error_code ec;
    std::filesystem::rename(partial, target, ec);
    if (ec) throw std::runtime_error(ec.message());
  });
}

// ---------------------------------------------------------------------------------------
// Reading

bool has_link(hid_t loc, const char* name) { return MOEPROXY_H5(H5Lexists(loc, name, H5P_DEFAULT)) > 0; }

template <class T>
T read_attribute(hid_t loc, const char* name) {
  T value{};
  Handle attr(MOEPROXY_H5(H5Aopen(loc, name, H5P_DEFAULT)), H5Aclose);
  MOEPROXY_H5(H5Aread(attr.id(), H5Type<T>::memory(), &value));
  MOEPROXY_H5(attr.close());
  return value;
}

template <>
std::string read_attribute<std::string>(hid_t loc, const char* name) {
  Handle attr(MOEPROXY_H5(H5Aopen(loc, name, H5P_DEFAULT)), H5Aclose);
  Handle file_type(MOEPROXY_H5(H5Aget_type(attr.id())), H5Tclose);
  if (MOEPROXY_H5(H5Tis_variable_str(file_type.id())) <= 0)
    throw std::runtime_error(std::string("attribute ") + name + " is not a variable-length string");
  Handle type = string_type(H5T_VARIABLE);
  char* text = nullptr;
  MOEPROXY_H5(H5Aread(attr.id(), type.id(), &text));
  std::string value = text ? text : "";
  MOEPROXY_H5(H5free_memory(text));
  MOEPROXY_H5(type.close());
  MOEPROXY_H5(file_type.close());
  MOEPROXY_H5(attr.close());
  return value;
}

std::vector<hsize_t> dataset_dims(hid_t dset) {
  Handle space(MOEPROXY_H5(H5Dget_space(dset)), H5Sclose);
  std::vector<hsize_t> dims(static_cast<std::size_t>(MOEPROXY_H5(H5Sget_simple_extent_ndims(space.id()))));
  MOEPROXY_H5(H5Sget_simple_extent_dims(space.id(), dims.data(), nullptr));
  MOEPROXY_H5(space.close());
  return dims;
}

std::string shape_text(const std::vector<hsize_t>& dims) {
  std::string text = "[";
  for (std::size_t d = 0; d < dims.size(); ++d) text += (d ? ", " : "") + std::to_string(dims[d]);
  return text + "]";
}

// Reads a whole dataset and checks its shape; a 0 in `expected` accepts any extent there.
template <class T>
std::vector<T> read_dataset(hid_t loc, const char* name, const std::vector<hsize_t>& expected,
                            std::vector<hsize_t>* dims_out = nullptr) {
  Handle dset(MOEPROXY_H5(H5Dopen2(loc, name, H5P_DEFAULT)), H5Dclose);
  const std::vector<hsize_t> dims = dataset_dims(dset.id());
  bool matches = dims.size() == expected.size();
  for (std::size_t d = 0; matches && d < dims.size(); ++d) matches = expected[d] == 0 || expected[d] == dims[d];
  if (!matches)
    throw std::runtime_error(std::string("dataset ") + name + " has shape " + shape_text(dims) + ", expected " +
                             shape_text(expected) + " (0 = any)");
  hsize_t elements = 1;
  for (hsize_t d : dims) elements *= d;
  std::vector<T> data(elements);
  if (elements > 0)
    MOEPROXY_H5(H5Dread(dset.id(), H5Type<T>::memory(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
  MOEPROXY_H5(dset.close());
  if (dims_out) *dims_out = dims;
  return data;
}

std::vector<std::string> read_strings(hid_t loc, const char* name, hsize_t expected = 0) {
  Handle dset(MOEPROXY_H5(H5Dopen2(loc, name, H5P_DEFAULT)), H5Dclose);
  const std::vector<hsize_t> dims = dataset_dims(dset.id());
  if (dims.size() != 1 || (expected && dims[0] != expected))
    throw std::runtime_error(std::string("dataset ") + name + " has shape " + shape_text(dims) + ", expected [" +
                             (expected ? std::to_string(expected) : "any") + "]");
  Handle file_type(MOEPROXY_H5(H5Dget_type(dset.id())), H5Tclose);
  if (MOEPROXY_H5(H5Tget_class(file_type.id())) != H5T_STRING || MOEPROXY_H5(H5Tis_variable_str(file_type.id())) > 0)
    throw std::runtime_error(std::string("dataset ") + name + " does not hold fixed-length strings");
  const std::size_t width = H5Tget_size(file_type.id());
  if (width == 0) throw std::runtime_error(std::string("H5Tget_size failed at ") + where(__FILE__, __LINE__));
  Handle type = string_type(width);
  std::string packed(dims[0] * width, '\0');
  if (dims[0] > 0) MOEPROXY_H5(H5Dread(dset.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, packed.data()));
  std::vector<std::string> strings;
  for (hsize_t i = 0; i < dims[0]; ++i) strings.emplace_back(packed.c_str() + i * width);
  MOEPROXY_H5(type.close());
  MOEPROXY_H5(file_type.close());
  MOEPROXY_H5(dset.close());
  return strings;
}

Handle open_group(hid_t file, const char* name) {
  return Handle(MOEPROXY_H5(H5Gopen2(file, name, H5P_DEFAULT)), H5Gclose);
}

ResultsFile read_file(const std::string& path) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("no such file");
  Handle file(MOEPROXY_H5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)), H5Fclose);
  const hid_t root = file.id();
  ResultsFile out;
  if (MOEPROXY_H5(H5Aexists(root, "schema_version")) <= 0)
    throw std::runtime_error("not a moeproxy results file (no schema_version attribute)");
  out.schema_version = read_attribute<int>(root, "schema_version");
  if (out.schema_version != results_schema_version)
    throw std::runtime_error("schema version " + std::to_string(out.schema_version) + ", this build reads " +
                             std::to_string(results_schema_version));
  out.complete = read_attribute<int>(root, "complete") != 0;
  if (!out.complete) {
    MOEPROXY_H5(file.close());
    return out;
  }

  out.deck = read_attribute<std::string>(root, "deck");
  out.app_version = read_attribute<std::string>(root, "app_version");
  out.git_sha = read_attribute<std::string>(root, "git_sha");
  out.command_line = read_attribute<std::string>(root, "command_line");
  out.kokkos_config = read_attribute<std::string>(root, "kokkos_config");
  out.layout = read_attribute<std::string>(root, "layout");
  // Files from before the NCCL backend have no record of it.
  if (MOEPROXY_H5(H5Aexists(root, "comm_backend")) > 0) out.comm_backend = read_attribute<std::string>(root, "comm_backend");
  out.ranks = read_attribute<int>(root, "mpi_size");
  out.predicted = read_attribute<int>(root, "predicted") != 0;
  const auto ranks = static_cast<hsize_t>(out.ranks);
  out.hosts = read_strings(root, "hosts", ranks);
  out.devices = read_strings(root, "devices", ranks);

  {
    Handle group = open_group(root, "summary");
    const hid_t g = group.id();
    RunSummary& m = out.summary;
    m.prefill_tokens_per_s = read_attribute<double>(g, "prefill_tokens_per_s");
    m.ttft_s = read_attribute<double>(g, "ttft_s");
    m.tpot_s = read_attribute<double>(g, "tpot_s");
    m.decode_tokens_per_s = read_attribute<double>(g, "decode_tokens_per_s");
    m.mfu = read_attribute<double>(g, "mfu");
    m.peak_flops = read_attribute<double>(g, "peak_flops");
    m.comm_fraction = read_attribute<double>(g, "comm_fraction");
    m.comm_seconds_raw = read_attribute<double>(g, "comm_seconds_raw");
    // Files from before the hidden/exposed split counted only exposed communication.
    if (MOEPROXY_H5(H5Aexists(g, "comm_exposed_s")) > 0) {
      m.comm_exposed_seconds = read_attribute<double>(g, "comm_exposed_s");
      m.comm_hidden_seconds = read_attribute<double>(g, "comm_hidden_s");
    } else {
      m.comm_exposed_seconds = m.comm_seconds_raw;
    }
    m.expert_imbalance = read_attribute<double>(g, "expert_imbalance");
    m.dropped_tokens = read_attribute<std::uint64_t>(g, "dropped_tokens");
    m.verification = read_attribute<std::string>(g, "verification");
    m.max_rel_error = read_attribute<double>(g, "max_rel_error");
    m.tolerance = read_attribute<double>(g, "tolerance");
    m.verification_note = read_attribute<std::string>(g, "verification_note");
    // Files from before parallel.comm_compression compressed nothing.
    if (MOEPROXY_H5(H5Aexists(g, "comm_compression")) > 0) {
      m.comm_compression = read_attribute<std::string>(g, "comm_compression");
      m.compression_tolerance = read_attribute<double>(g, "compression_tolerance");
      m.comm_bytes_saved = read_attribute<std::uint64_t>(g, "comm_bytes_saved");
    }
    MOEPROXY_H5(group.close());
  }
  if (has_link(root, "failover")) {
    Handle group = open_group(root, "failover");
    const hid_t g = group.id();
    FailoverSummary& f = out.summary.failover;
    f.ran = true;
    f.fail_rank = read_attribute<int>(g, "fail_rank");
    f.fail_step = read_attribute<int>(g, "fail_step");
    f.takeover_rank = read_attribute<int>(g, "takeover_rank");
    f.sequences = read_attribute<int>(g, "sequences");
    f.recovery_s = read_attribute<double>(g, "recovery_s");
    f.tokens_per_s_before = read_attribute<double>(g, "decode_tokens_per_s_before");
    f.tokens_per_s_after = read_attribute<double>(g, "decode_tokens_per_s_after");
    MOEPROXY_H5(group.close());
  }
  {
    Handle group = open_group(root, "timing");
    out.phases = read_strings(group.id(), "phases");
    const hsize_t phases = out.phases.size();
    std::vector<hsize_t> dims;
    out.prefill_timing = read_dataset<double>(group.id(), "prefill", {ranks, 0, phases}, &dims);
    out.layers = static_cast<int>(dims[1]);
    out.decode_timing = read_dataset<double>(group.id(), "decode", {ranks, dims[1], phases});
    out.prefill_wall = read_dataset<double>(group.id(), "prefill_wall", {ranks});
    out.decode_wall = read_dataset<double>(group.id(), "decode_wall", {ranks});
    if (has_link(group.id(), "decode_step_wall"))
      out.decode_step_wall = read_dataset<double>(group.id(), "decode_step_wall", {ranks, 0});
    if (has_link(group.id(), "comm_exposed")) {
      out.comm_exposed = read_dataset<double>(group.id(), "comm_exposed", {ranks});
      out.comm_hidden = read_dataset<double>(group.id(), "comm_hidden", {ranks});
    }
    MOEPROXY_H5(group.close());
  }
  {
    Handle group = open_group(root, "memory");
    out.memory_kinds = read_strings(group.id(), "kinds");
    out.memory_bytes = read_dataset<std::uint64_t>(group.id(), "bytes", {ranks, out.memory_kinds.size()});
    MOEPROXY_H5(group.close());
  }
  {
    Handle group = open_group(root, "flops");
    out.prefill_flops = read_dataset<double>(group.id(), "prefill", {ranks});
    out.decode_flops = read_dataset<double>(group.id(), "decode", {ranks});
    MOEPROXY_H5(group.close());
  }
  if (has_link(root, "experts")) {
    Handle group = open_group(root, "experts");
    std::vector<hsize_t> dims;
    out.experts.tokens = read_dataset<std::uint64_t>(group.id(), "tokens", {0, 0}, &dims);
    out.experts.layers = static_cast<int>(dims[0]);
    out.experts.experts = static_cast<int>(dims[1]);
    MOEPROXY_H5(group.close());
  }
  {
    Handle group = open_group(root, "comm");
    out.comm_keys = read_strings(group.id(), "keys");
    const hsize_t keys = out.comm_keys.size();
    out.comm_group_size = read_dataset<int>(group.id(), "group_size", {keys});
    out.comm_calls = read_dataset<std::uint64_t>(group.id(), "calls", {ranks, keys});
    out.comm_bytes = read_dataset<std::uint64_t>(group.id(), "bytes", {ranks, keys});
    out.comm_uncompressed_bytes = has_link(group.id(), "uncompressed_bytes")
                                      ? read_dataset<std::uint64_t>(group.id(), "uncompressed_bytes", {ranks, keys})
                                      : out.comm_bytes;
    out.comm_seconds = read_dataset<double>(group.id(), "seconds", {ranks, keys});
    if (has_link(group.id(), "hidden")) out.comm_hidden_seconds = read_dataset<double>(group.id(), "hidden", {ranks, keys});
    if (has_link(group.id(), "algbw")) {
      out.comm_algbw = read_dataset<double>(group.id(), "algbw", {ranks, keys});
      out.comm_busbw = read_dataset<double>(group.id(), "busbw", {ranks, keys});
    }
    MOEPROXY_H5(group.close());
  }
  if (has_link(root, "output")) {
    Handle group = open_group(root, "output");
    std::vector<hsize_t> dims;
    out.hidden_prefill = read_dataset<float>(group.id(), "hidden_prefill", {0, 0, 0}, &dims);
    out.batch = static_cast<int>(dims[0]);
    out.prompt = static_cast<int>(dims[1]);
    out.hidden = static_cast<int>(dims[2]);
    out.hidden_decode = read_dataset<float>(group.id(), "hidden_decode", {dims[0], 0, dims[2]}, &dims);
    out.decode_steps = static_cast<int>(dims[1]);
    MOEPROXY_H5(group.close());
  }
  MOEPROXY_H5(file.close());
  return out;
}

}  // namespace

std::string results_path_error(const std::string& path) {
  // ROMIO (the MPI-IO of MPICH and of the MPIs built on it; MPICH 4.0 here) takes the text
  // before a ':' for a file-system type and refuses to open the file when it names none.
  if (path.find(':') != std::string::npos)
    return "contains ':', which MPI-IO reads as a file-system prefix (\"ufs:\", \"lustre:\"); "
           "choose a name without ':'";
  return "";
}

void write_results(MPI_Comm comm, const std::string& path, const RunConfig& cfg, const RunInfo& info,
                   const RankMetrics& local, const RunSummary& summary, const ExpertCounts& experts,
                   const HiddenDump* dump, const BalanceLog* balance) {
  QuietHdf5Errors quiet;
  try {
    write_file(comm, path, cfg, info, {&local}, comm_rank(comm), comm_size(comm), summary, experts, dump, balance);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot write results file " + path + ": " + e.what());
  }
}

void write_predicted_results(const std::string& path, const RunConfig& cfg, const RunInfo& info,
                             const std::vector<RankMetrics>& ranks, const RunSummary& summary,
                             const ExpertCounts& experts) {
  QuietHdf5Errors quiet;
  std::vector<const RankMetrics*> locals;
  for (const RankMetrics& r : ranks) locals.push_back(&r);
  RunInfo predicted = info;
  predicted.predicted = true;
  try {
    if (locals.empty()) throw std::runtime_error("no ranks to write");
    write_file(MPI_COMM_SELF, path, cfg, predicted, locals, 0, static_cast<int>(locals.size()), summary, experts,
               nullptr, nullptr);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot write results file " + path + ": " + e.what());
  }
}

ResultsFile read_results(const std::string& path) {
  QuietHdf5Errors quiet;
  try {
    return read_file(path);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot read results file " + path + ": " + e.what());
  }
}

}  // namespace moeproxy::io
