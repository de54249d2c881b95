#pragma once
// The communication the strategies do on the layers' data, one interface over two backends:
//   MPI:  any build; device buffers staged through host memory (no CUDA-aware MPI assumed;
//         on a host build the staging aliases and copies nothing);
//   NCCL: the CUDA variant only; device buffers in place, on the execution space's stream,
//         one communicator per group created with ncclCommInitRank from an id rank 0 of the
//         group broadcasts over MPI. NCCL refuses two ranks on one GPU
//         (select_comm_backend in comm_stats.hpp decides).
// Everything but the transport lives here, shared: argument checks, fences, timing and the
// records (comm_stats.hpp), so that the multi-rank logic the MPI backend tests on CPUs is
// the logic NCCL runs. A call returns with its result in place: it fences the space before
// (the buffer is complete) and after (the time is the communication's).
//
// The non-blocking all-to-all-v (ialltoallv) returns at once; its result is in place after
// wait(). Between the two the caller computes, and test() lets the transport progress and
// notes when the transfer was first seen complete. The records: "ialltoallv" (bytes and the
// posting time) and "wait" (seconds: blocked in test and wait; hidden: the wall time in
// which some transfer of the group was in flight, posted and not yet seen complete, while
// the rank was outside the group's calls, i.e. computing). MPI posts
// MPI_Ialltoallv on staged copies; NCCL has no second stream here yet, so its post runs the
// grouped send/recv on the compute stream, ordered with the kernels: correct, not overlapped.
//
// Every pointer is to `count` contiguous floats in the execution space's memory.

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moeproxy/core/types.hpp"
#include "moeproxy/parallel/comm.hpp"
#include "moeproxy/parallel/comm_stats.hpp"

namespace moeproxy::parallel {

class DeviceComm {
 public:
  // `host` is the same group on MPI, for the control plane (counts, ids); it must outlive this.
  DeviceComm(Communicator& host, const ExecSpace& space);
  virtual ~DeviceComm() = default;
  DeviceComm(const DeviceComm&) = delete;
  DeviceComm& operator=(const DeviceComm&) = delete;

  virtual CommBackend backend() const = 0;
  Communicator& host() { return host_; }
  int rank() const { return host_.rank(); }
  int size() const { return host_.size(); }

  // In place: data = sum over the group.
  void allreduce_sum(float* data, std::size_t count);
  // recv [size * count] = every rank's send [count], in rank order.
  void allgather(const float* send, float* recv, std::size_t count);
  // recv [count] = the sum over the group of block `rank` of send [size * count].
  void reduce_scatter_sum(const float* send, float* recv, std::size_t count);
  // Counts and displacements in floats, per rank of the group (grouped send/recv on NCCL).
  // `uncompressed_send_counts`, when the data is compressed (compression.hpp): what the
  // send counts would have been without, for the records.
  void alltoallv(const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs,
                 float* recv, const std::vector<int>& recv_counts, const std::vector<int>& recv_displs,
                 const std::vector<int>& uncompressed_send_counts = {});
  // A posted ialltoallv, until wait() completes it.
  using Ticket = int;
  Ticket ialltoallv(const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs,
                    float* recv, const std::vector<int>& recv_counts, const std::vector<int>& recv_displs,
                    const std::vector<int>& uncompressed_send_counts = {});
  // Whether the transfer has completed (its result is in place only after wait).
  bool test(Ticket ticket);
  void wait(Ticket ticket);
  // Messages between two ranks arrive in the order they were sent.
  void send(const float* data, std::size_t count, int dest);
  void recv(float* data, std::size_t count, int source);
  void barrier();

  std::vector<CommRecord> records() const { return log_.records(); }
  void clear_records() { log_.clear(); }

 protected:
  virtual void transport_allreduce_sum(float* data, std::size_t count) = 0;
  virtual void transport_allgather(const float* send, float* recv, std::size_t count) = 0;
  virtual void transport_reduce_scatter_sum(const float* send, float* recv, std::size_t count) = 0;
  virtual void transport_alltoallv(const float* send, const std::vector<int>& send_counts,
                                   const std::vector<int>& send_displs, float* recv,
                                   const std::vector<int>& recv_counts, const std::vector<int>& recv_displs) = 0;
  // What a backend keeps of a posted transfer until it completes.
  struct Posted {
    virtual ~Posted() = default;
  };
  // The default runs the blocking transport at the post: correct ordering, no overlap.
  virtual std::unique_ptr<Posted> transport_ialltoallv(const float* send, const std::vector<int>& send_counts,
                                                       const std::vector<int>& send_displs, float* recv,
                                                       const std::vector<int>& recv_counts,
                                                       const std::vector<int>& recv_displs);
  virtual bool transport_test(Posted& posted);
  virtual void transport_wait(Posted& posted);
  virtual void transport_send(const float* data, std::size_t count, int dest) = 0;
  virtual void transport_recv(float* data, std::size_t count, int source) = 0;

  Communicator& host_;
  ExecSpace space_;

 private:
  template <class Call>
  void timed(CommOp op, const CommVolume& volume, Call&& call);
  struct InFlight {
    std::unique_ptr<Posted> posted;
    bool seen_complete = false;
  };
  // Entering a call of the group: the time since the last one left was hidden if a
  // transfer was in flight.
  void enter_call();
  void leave_call() { left_call_ = clock_.seconds(); }
  CommLog log_;
  Kokkos::Timer clock_;
  double left_call_ = 0.0;  // clock_ when the last call of the group returned
  int open_ = 0;            // transfers posted and not yet seen complete
  std::map<Ticket, InFlight> in_flight_;
  Ticket next_ticket_ = 0;
};

// The backend's communicator for the group of `host` (collective over that group).
// NCCL on a build without it throws std::logic_error: select_comm_backend refuses first.
std::unique_ptr<DeviceComm> make_device_comm(CommBackend backend, Communicator& host, const ExecSpace& space);

// How many ranks of `comm` share this rank's GPU (itself included), 0 when it has none
// (always on a host build). Collective.
int gpu_sharers(MPI_Comm comm);

// The most ranks of `comm` that share one GPU (1: every rank has its own), 0 when some rank
// has none (always on a host build). Collective.
int ranks_per_gpu(MPI_Comm comm);

}  // namespace moeproxy::parallel
