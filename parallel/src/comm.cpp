#include "moeproxy/parallel/comm.hpp"

#include <stdexcept>

namespace moeproxy::parallel {

void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                           " failed: " + std::string(text, len));
}

Communicator::Communicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  MOEPROXY_MPI(MPI_Comm_rank(comm_, &rank_));
  MOEPROXY_MPI(MPI_Comm_size(comm_, &size_));
}

template <class Call>
void Communicator::timed(const char* op, std::uint64_t bytes, Call&& call) {
  const double t0 = MPI_Wtime();
  call();
  CommRecord& r = records_[op];
  r.operation = op;
  r.group = name_;
  r.group_size = size_;
  r.calls += 1;
  r.bytes += bytes;
  r.seconds += MPI_Wtime() - t0;
}

namespace {
// Bytes a ring all-reduce sends from each rank: 2 (n - 1) / n of the buffer, as nccl-tests
// counts bus traffic; zero on one rank.
std::uint64_t allreduce_bytes(std::size_t payload, int n) {
  return n > 1 ? static_cast<std::uint64_t>(2.0 * (n - 1) / n * static_cast<double>(payload)) : 0;
}
}  // namespace

void Communicator::barrier() {
  timed("barrier", 0, [&] { MOEPROXY_MPI(MPI_Barrier(comm_)); });
}

void Communicator::allreduce_sum(float* data, int count) {
  timed("allreduce", allreduce_bytes(sizeof(float) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_FLOAT, MPI_SUM, comm_)); });
}

void Communicator::allreduce_sum(double* data, int count) {
  timed("allreduce", allreduce_bytes(sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_SUM, comm_)); });
}

void Communicator::allreduce_sum(std::uint64_t* data, int count) {
  timed("allreduce", allreduce_bytes(sizeof(std::uint64_t) * count, size_), [&] {
    MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_UINT64_T, MPI_SUM, comm_));
  });
}

void Communicator::allreduce_max(double* data, int count) {
  timed("allreduce", allreduce_bytes(sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_MAX, comm_)); });
}

void Communicator::allreduce_min(double* data, int count) {
  timed("allreduce", allreduce_bytes(sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_MIN, comm_)); });
}

void Communicator::broadcast(void* data, int bytes, int root) {
  timed("broadcast", rank_ == root ? static_cast<std::uint64_t>(bytes) * (size_ - 1) : 0,
        [&] { MOEPROXY_MPI(MPI_Bcast(data, bytes, MPI_BYTE, root, comm_)); });
}

void Communicator::send(const float* data, int count, int dest, int tag) {
  timed("send", dest == rank_ ? 0 : sizeof(float) * static_cast<std::uint64_t>(count),
        [&] { MOEPROXY_MPI(MPI_Send(data, count, MPI_FLOAT, dest, tag, comm_)); });
}

void Communicator::recv(float* data, int count, int source, int tag) {
  timed("recv", 0, [&] {
    MOEPROXY_MPI(MPI_Recv(data, count, MPI_FLOAT, source, tag, comm_, MPI_STATUS_IGNORE));
  });
}

void Communicator::irecv(float* data, int count, int source, int tag) {
  pending_.emplace_back();
  MOEPROXY_MPI(MPI_Irecv(data, count, MPI_FLOAT, source, tag, comm_, &pending_.back()));
}

void Communicator::wait_all() {
  timed("recv", 0, [&] {
    MOEPROXY_MPI(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE));
  });
  pending_.clear();
}

MPI_Request Communicator::post_send(const float* data, int count, int dest, int tag) {
  MPI_Request request;
  timed("isend", dest == rank_ ? 0 : sizeof(float) * static_cast<std::uint64_t>(count),
        [&] { MOEPROXY_MPI(MPI_Isend(data, count, MPI_FLOAT, dest, tag, comm_, &request)); });
  return request;
}

MPI_Request Communicator::post_send(const int* data, int count, int dest, int tag) {
  MPI_Request request;
  timed("isend", dest == rank_ ? 0 : sizeof(int) * static_cast<std::uint64_t>(count),
        [&] { MOEPROXY_MPI(MPI_Isend(data, count, MPI_INT, dest, tag, comm_, &request)); });
  return request;
}

MPI_Request Communicator::post_recv(float* data, int count, int source, int tag) {
  MPI_Request request;
  timed("irecv", 0, [&] { MOEPROXY_MPI(MPI_Irecv(data, count, MPI_FLOAT, source, tag, comm_, &request)); });
  return request;
}

MPI_Request Communicator::post_recv(int* data, int count, int source, int tag) {
  MPI_Request request;
  timed("irecv", 0, [&] { MOEPROXY_MPI(MPI_Irecv(data, count, MPI_INT, source, tag, comm_, &request)); });
  return request;
}

void Communicator::wait(std::vector<MPI_Request>& requests) {
  timed("wait", 0, [&] {
    MOEPROXY_MPI(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
  });
  requests.clear();
}

void Communicator::alltoall(const int* send, int* recv, int count) {
  timed("alltoall", sizeof(int) * static_cast<std::uint64_t>(count) * (size_ - 1),
        [&] { MOEPROXY_MPI(MPI_Alltoall(send, count, MPI_INT, recv, count, MPI_INT, comm_)); });
}

void Communicator::alltoallv(const float* send, const std::vector<int>& send_counts,
                             const std::vector<int>& send_displs, float* recv,
                             const std::vector<int>& recv_counts, const std::vector<int>& recv_displs) {
  std::uint64_t bytes = 0;
  for (int r = 0; r < size_; ++r)
    if (r != rank_) bytes += sizeof(float) * static_cast<std::uint64_t>(send_counts[r]);
  timed("alltoallv", bytes, [&] {
    MOEPROXY_MPI(MPI_Alltoallv(send, send_counts.data(), send_displs.data(), MPI_FLOAT, recv,
                               recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm_));
  });
}

std::vector<double> Communicator::gather(const std::vector<double>& local, int root) {
  std::vector<double> all(rank_ == root ? local.size() * size_ : 0);
  timed("gather", rank_ == root ? 0 : sizeof(double) * local.size(), [&] {
    MOEPROXY_MPI(MPI_Gather(local.data(), static_cast<int>(local.size()), MPI_DOUBLE, all.data(),
                            static_cast<int>(local.size()), MPI_DOUBLE, root, comm_));
  });
  return all;
}

std::vector<CommRecord> Communicator::records() const {
  std::vector<CommRecord> out;
  for (const auto& kv : records_) out.push_back(kv.second);
  return out;
}

}  // namespace moeproxy::parallel
