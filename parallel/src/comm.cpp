#include "moeproxy/parallel/comm.hpp"

#include <algorithm>
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

namespace {
int rank_of(MPI_Comm comm) {
  int r = 0;
  MOEPROXY_MPI(MPI_Comm_rank(comm, &r));
  return r;
}
int size_of(MPI_Comm comm) {
  int n = 1;
  MOEPROXY_MPI(MPI_Comm_size(comm, &n));
  return n;
}
}  // namespace

Communicator::Communicator(MPI_Comm comm, std::string name)
    : comm_(comm), name_(std::move(name)), rank_(rank_of(comm)), size_(size_of(comm)), log_(name_, size_) {}

template <class Call>
void Communicator::timed(CommOp op, const CommVolume& volume, Call&& call) {
  const double t0 = MPI_Wtime();
  if (!posted_.empty()) log_.add_hidden(CommOp::wait, t0 - left_call_);
  call();
  left_call_ = MPI_Wtime();
  log_.add(op, volume, left_call_ - t0);
}

void Communicator::barrier() {
  timed(CommOp::barrier, {}, [&] { MOEPROXY_MPI(MPI_Barrier(comm_)); });
}

void Communicator::allreduce_sum(float* data, int count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(float) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_FLOAT, MPI_SUM, comm_)); });
}

void Communicator::allreduce_sum(double* data, int count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_SUM, comm_)); });
}

void Communicator::allreduce_sum(std::uint64_t* data, int count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(std::uint64_t) * count, size_), [&] {
    MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_UINT64_T, MPI_SUM, comm_));
  });
}

void Communicator::allreduce_max(double* data, int count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_MAX, comm_)); });
}

void Communicator::allreduce_min(double* data, int count) {
  timed(CommOp::allreduce, collective_volume(CommOp::allreduce, sizeof(double) * count, size_),
        [&] { MOEPROXY_MPI(MPI_Allreduce(MPI_IN_PLACE, data, count, MPI_DOUBLE, MPI_MIN, comm_)); });
}

void Communicator::broadcast(void* data, int bytes, int root) {
  timed(CommOp::broadcast, collective_volume(CommOp::broadcast, bytes, size_, rank_ == root),
        [&] { MOEPROXY_MPI(MPI_Bcast(data, bytes, MPI_BYTE, root, comm_)); });
}

void Communicator::send(const float* data, int count, int dest, int tag) {
  timed(CommOp::send, send_volume(sizeof(float) * static_cast<std::uint64_t>(count), rank_, dest),
        [&] { MOEPROXY_MPI(MPI_Send(data, count, MPI_FLOAT, dest, tag, comm_)); });
}

void Communicator::recv(float* data, int count, int source, int tag) {
  timed(CommOp::recv, recv_volume(sizeof(float) * static_cast<std::uint64_t>(count), rank_, source), [&] {
    MOEPROXY_MPI(MPI_Recv(data, count, MPI_FLOAT, source, tag, comm_, MPI_STATUS_IGNORE));
  });
}

void Communicator::irecv(float* data, int count, int source, int tag) {
  const CommVolume v = recv_volume(sizeof(float) * static_cast<std::uint64_t>(count), rank_, source);
  pending_volume_.alg += v.alg;
  pending_volume_.bus += v.bus;
  pending_.emplace_back();
  MOEPROXY_MPI(MPI_Irecv(data, count, MPI_FLOAT, source, tag, comm_, &pending_.back()));
}

void Communicator::wait_all() {
  timed(CommOp::recv, pending_volume_, [&] {
    MOEPROXY_MPI(MPI_Waitall(static_cast<int>(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE));
  });
  pending_.clear();
  pending_volume_ = CommVolume{};
}

MPI_Request Communicator::post_send(const float* data, int count, int dest, int tag) {
  return post_send(data, count, count, dest, tag);
}

MPI_Request Communicator::post_send(const float* data, int count, int uncompressed_count, int dest, int tag) {
  MPI_Request request;
  CommVolume volume = send_volume(sizeof(float) * static_cast<std::uint64_t>(count), rank_, dest);
  volume.saved = send_volume(sizeof(float) * static_cast<std::uint64_t>(uncompressed_count), rank_, dest).bytes -
                 volume.bytes;
  timed(CommOp::isend, volume, [&] { MOEPROXY_MPI(MPI_Isend(data, count, MPI_FLOAT, dest, tag, comm_, &request)); });
  posted_.push_back(request);
  return request;
}

MPI_Request Communicator::post_send(const int* data, int count, int dest, int tag) {
  MPI_Request request;
  timed(CommOp::isend, send_volume(sizeof(int) * static_cast<std::uint64_t>(count), rank_, dest),
        [&] { MOEPROXY_MPI(MPI_Isend(data, count, MPI_INT, dest, tag, comm_, &request)); });
  posted_.push_back(request);
  return request;
}

MPI_Request Communicator::post_recv(float* data, int count, int source, int tag) {
  MPI_Request request;
  timed(CommOp::irecv, recv_volume(sizeof(float) * static_cast<std::uint64_t>(count), rank_, source),
        [&] { MOEPROXY_MPI(MPI_Irecv(data, count, MPI_FLOAT, source, tag, comm_, &request)); });
  posted_.push_back(request);
  return request;
}

MPI_Request Communicator::post_recv(int* data, int count, int source, int tag) {
  MPI_Request request;
  timed(CommOp::irecv, recv_volume(sizeof(int) * static_cast<std::uint64_t>(count), rank_, source),
        [&] { MOEPROXY_MPI(MPI_Irecv(data, count, MPI_INT, source, tag, comm_, &request)); });
  posted_.push_back(request);
  return request;
}

void Communicator::wait(std::vector<MPI_Request>& requests) {
  const std::vector<MPI_Request> completed = requests;  // MPI_Waitall resets them
  timed(CommOp::wait, {}, [&] {
    MOEPROXY_MPI(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE));
  });
  requests.clear();
  for (const MPI_Request r : completed) {
    const auto found = std::find(posted_.begin(), posted_.end(), r);
    if (found != posted_.end()) posted_.erase(found);
  }
}

void Communicator::alltoall(const int* send, int* recv, int count) {
  timed(CommOp::alltoall,
        collective_volume(CommOp::alltoall, sizeof(int) * static_cast<std::uint64_t>(count) * size_, size_),
        [&] { MOEPROXY_MPI(MPI_Alltoall(send, count, MPI_INT, recv, count, MPI_INT, comm_)); });
}

void Communicator::alltoallv(const float* send, const std::vector<int>& send_counts,
                             const std::vector<int>& send_displs, float* recv,
                             const std::vector<int>& recv_counts, const std::vector<int>& recv_displs) {
  std::vector<std::uint64_t> bytes(send_counts.begin(), send_counts.end());
  for (auto& b : bytes) b *= sizeof(float);
  timed(CommOp::alltoallv, alltoallv_volume(bytes, rank_), [&] {
    MOEPROXY_MPI(MPI_Alltoallv(send, send_counts.data(), send_displs.data(), MPI_FLOAT, recv,
                               recv_counts.data(), recv_displs.data(), MPI_FLOAT, comm_));
  });
}

std::vector<double> Communicator::gather(const std::vector<double>& local, int root) {
  std::vector<double> all(rank_ == root ? local.size() * size_ : 0);
  timed(CommOp::gather, collective_volume(CommOp::gather, sizeof(double) * local.size() * size_, size_, rank_ == root),
        [&] {
          MOEPROXY_MPI(MPI_Gather(local.data(), static_cast<int>(local.size()), MPI_DOUBLE, all.data(),
                                  static_cast<int>(local.size()), MPI_DOUBLE, root, comm_));
        });
  return all;
}

}  // namespace moeproxy::parallel
