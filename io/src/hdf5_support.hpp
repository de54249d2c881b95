#pragma once
// What both HDF5 files (results, checkpoints) need around the C API: checked calls whose
// exceptions name the call, the line and HDF5's own cause; ids that close themselves; and
// HDF5's error printing silenced while our messages carry the cause. Private to io/.

#include <hdf5.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace moeproxy::io::hdf5 {

inline const char* base_name(const char* file) {
  const char* slash = std::strrchr(file, '/');
  return slash ? slash + 1 : file;
}

inline std::string where(const char* file, int line) { return std::string(base_name(file)) + ":" + std::to_string(line); }

inline herr_t innermost_error(unsigned n, const H5E_error2_t* err, void* out) {
  if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
  return 0;
}

template <class T>
T h5_check(T status, const char* call, const char* file, int line) {
  if (status >= 0) return status;
  // The innermost entry of HDF5's error stack is the one that names the cause (errno, path).
  std::string cause;
  if (H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, &cause) < 0) cause.clear();
  std::string message = std::string(call) + " failed at " + where(file, line);
  if (!cause.empty()) message += ": " + cause;
  throw std::runtime_error(message);
}
#define MOEPROXY_H5(call) ::moeproxy::io::hdf5::h5_check((call), #call, __FILE__, __LINE__)


// HDF5 prints its error stack to stderr by default. Our exceptions carry the cause instead,
// so that a failure reads as one message rather than a stack dump from every rank.
class QuietHdf5Errors {
 public:
  QuietHdf5Errors() {
    // Failing to silence HDF5 costs only noise on stderr, never the write itself.
    saved_ = H5Eget_auto2(H5E_DEFAULT, &func_, &data_) >= 0 && H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr) >= 0;
  }
  ~QuietHdf5Errors() {
    // A destructor has no one to report to; a failed restore leaves HDF5 quiet, nothing worse.
    if (saved_) static_cast<void>(H5Eset_auto2(H5E_DEFAULT, func_, data_));
  }
  QuietHdf5Errors(const QuietHdf5Errors&) = delete;
  QuietHdf5Errors& operator=(const QuietHdf5Errors&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
  bool saved_ = false;
};

// Owns an HDF5 id. close() is the checked way to release it; the destructor is the fallback
// while unwinding from an error, where the first failure is the one worth reporting.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept
      : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      release();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { release(); }

  hid_t id() const { return id_; }
  herr_t close() { return closer_(std::exchange(id_, H5I_INVALID_HID)); }

 private:
  void release() noexcept {
    if (id_ >= 0) static_cast<void>(closer_(std::exchange(id_, H5I_INVALID_HID)));
  }
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

}  // namespace moeproxy::io::hdf5

// An id from a checked call, closed by `close` (H5Dclose, ...).
#define MOEPROXY_HANDLE(call, close) ::moeproxy::io::hdf5::Handle(MOEPROXY_H5(call), close)
