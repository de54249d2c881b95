#pragma once
// What both communication backends (MPI and NCCL) share and neither transport knows about:
// how much data an operation moves, as nccl-tests counts it, the per-group log of every call,
// and the choice of backend. Plain host code, so that it is unit-tested without MPI ranks or
// a GPU.
//
// nccl-tests (doc/PERFORMANCE.md) reports two bandwidths per operation:
//   algbw = size / time, where size is the buffer the operation is about: the reduced buffer
//           of an all-reduce, the gathered buffer of an all-gather, the scattered input of a
//           reduce-scatter, everything a rank sends in an all-to-all, the message of a
//           send or receive;
//   busbw = algbw x factor, the factor being what a ring moves per rank:
//           all-reduce 2(n-1)/n; all-gather, reduce-scatter, all-to-all (n-1)/n; send,
//           receive, broadcast 1.
// For an all-to-all-v with uneven counts the bus bytes are the bytes sent to the other ranks
// (uniform counts give nccl-tests' (n-1)/n); every figure excludes self-traffic.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/metrics.hpp"

namespace moeproxy::parallel {

// isend / irecv / ialltoallv are non-blocking posts (their seconds are the posting only;
// their bandwidth figures are not link speeds); wait is the completion of posted requests
// (no bytes), whose records also carry the time the transfers they completed were hidden
// behind compute (CommLog::add_hidden).
enum class CommOp { allreduce, allgather, reduce_scatter, alltoall, alltoallv, ialltoallv, send, recv, isend, irecv, wait, broadcast, gather, barrier };
const char* to_string(CommOp op);

// Bytes of one call for the records. `bytes`: payload leaving this rank; `alg`: nccl-tests'
// size; `bus`: alg x the bus factor; `saved`: what compression kept off `bytes`.
struct CommVolume {
  std::uint64_t bytes = 0, alg = 0, bus = 0, saved = 0;
};

// nccl-tests' bus factor of `op` over `n` ranks (0 for a barrier; 1-rank groups move nothing).
double bus_factor(CommOp op, int n);

// The volume of a collective whose nccl-tests size is `size` bytes on `n` ranks (all ops but
// all-to-all-v, send and receive, whose volumes depend on the peers: see below).
CommVolume collective_volume(CommOp op, std::uint64_t size, int n, bool root = false);
// An all-to-all-v from rank `rank`: `send_bytes[r]` to rank r.
CommVolume alltoallv_volume(const std::vector<std::uint64_t>& send_bytes, int rank);
// A message of `size` bytes between `rank` and `peer`: nothing crosses the bus when they are
// the same rank.
CommVolume send_volume(std::uint64_t size, int rank, int peer);
CommVolume recv_volume(std::uint64_t size, int rank, int peer);

// Exclusive prefix sums: displacements of consecutive blocks of `counts` elements.
std::vector<int> displacements(const std::vector<int>& counts);

// Every call of one group, accumulated per operation.
class CommLog {
 public:
  CommLog(std::string group, int group_size) : group_(std::move(group)), group_size_(group_size) {}
  void add(CommOp op, const CommVolume& v, double seconds);
  // A posted transfer of `op` was in flight for `seconds` while the rank computed.
  void add_hidden(CommOp op, double seconds);
  std::vector<CommRecord> records() const;
  void clear() { records_.clear(); }

 private:
  std::string group_;
  int group_size_;
  std::map<std::string, CommRecord> records_;
};

// The backend a run uses. `requested` is parallel.comm; `nccl_built`: the binary has the
// NCCL backend (the CUDA variant); `ranks_per_gpu`: the most ranks sharing one GPU over the
// whole job (0 when no rank has a GPU). auto gives NCCL when it is built and every rank has
// a GPU of its own, MPI otherwise. Throws InputError, saying why and what to change, when
// NCCL is asked for and cannot run.
CommBackend select_comm_backend(CommBackend requested, bool nccl_built, int ranks_per_gpu);

// Whether this binary was built with the NCCL backend.
bool nccl_built();

}  // namespace moeproxy::parallel
