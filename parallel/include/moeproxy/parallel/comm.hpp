#pragma once
// MPI on host buffers, every call recorded (comm_stats.hpp): the control plane of a run
// (counts, metrics, verification samples, the pipeline's feedback rows) and the transport
// under the MPI backend of DeviceComm (device_comm.hpp), which moves the layers' data.

#include <mpi.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moeproxy/core/metrics.hpp"
#include "moeproxy/parallel/comm_stats.hpp"

namespace moeproxy::parallel {

// Throws std::runtime_error naming the call, file and line when an MPI call fails.
void check_mpi(int code, const char* call, const char* file, int line);
#define MOEPROXY_MPI(call) ::moeproxy::parallel::check_mpi((call), #call, __FILE__, __LINE__)

class Communicator {
 public:
  // Does not take ownership of comm; `name` labels the group in the records ("world", "dp").
  Communicator(MPI_Comm comm, std::string name);

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }
  const std::string& name() const { return name_; }

  void barrier();
  void allreduce_sum(float* data, int count);
  void allreduce_sum(double* data, int count);
  void allreduce_sum(std::uint64_t* data, int count);
  void allreduce_max(double* data, int count);
  void allreduce_min(double* data, int count);
  void broadcast(void* data, int bytes, int root);
  void send(const float* data, int count, int dest, int tag);
  void recv(float* data, int count, int source, int tag);
  // Non-blocking receive, completed (and timed) by wait_all.
  void irecv(float* data, int count, int source, int tag);
  void wait_all();
  // Non-blocking point-to-point the caller completes with wait(): "isend" records the bytes,
  // "wait" the time spent blocked on completion and, as hidden, the wall time in which some
  // posted request was not yet waited for while the rank was outside this group's calls.
  MPI_Request post_send(const float* data, int count, int dest, int tag);
  // The same for compressed data (compression.hpp) that would have been `uncompressed_count`
  // floats without compression, for the records.
  MPI_Request post_send(const float* data, int count, int uncompressed_count, int dest, int tag);
  MPI_Request post_send(const int* data, int count, int dest, int tag);
  MPI_Request post_recv(float* data, int count, int source, int tag);
  MPI_Request post_recv(int* data, int count, int source, int tag);
  void wait(std::vector<MPI_Request>& requests);
  // Fixed-size exchange: `count` ints to and from every rank.
  void alltoall(const int* send, int* recv, int count);
  // Variable-size exchange of floats; counts and displacements in elements, per rank.
  void alltoallv(const float* send, const std::vector<int>& send_counts, const std::vector<int>& send_displs,
                 float* recv, const std::vector<int>& recv_counts, const std::vector<int>& recv_displs);
  // Every rank contributes `local`; rank `root` receives all of them in rank order.
  std::vector<double> gather(const std::vector<double>& local, int root);

  // Accumulated records, one per operation on this group.
  std::vector<CommRecord> records() const { return log_.records(); }
  void clear_records() { log_.clear(); }

 private:
  template <class Call>
  void timed(CommOp op, const CommVolume& volume, Call&& call);

  MPI_Comm comm_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  CommLog log_;
  std::vector<MPI_Request> pending_;
  std::vector<MPI_Request> posted_;  // by post_send and post_recv, until their wait
  double left_call_ = 0.0;           // MPI_Wtime when the last call of the group returned
  CommVolume pending_volume_;  // of the receives wait_all completes
};

}  // namespace moeproxy::parallel
