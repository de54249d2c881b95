#pragma once
// Compression of the activations on two paths: the hidden rows attention/MoE separation
// trades between its two sides (separation.cpp) and the rows expert parallelism dispatches
// and combines (expert_parallel.cpp), both directions (parallel.comm_compression).
//
// Rows travel as "wire rows" of wire_width(d) floats. Without compression a wire row is the
// row itself. With int8 it is the row quantised on the device (core/kernels.hpp,
// quantize_int8_rows): one fp32 scale and d bytes packed four to a word, so only those words
// cross the host staging copy and the network; the transports move them as floats, unchanged
// (copies and point-to-point messages, never arithmetic). The receiver dequantises on the
// device. Counts of wire floats replace counts of row floats in the messages; the records
// keep what the uncompressed rows would have sent (CommRecord::uncompressed_bytes).

#include "moeproxy/core/config.hpp"
#include "moeproxy/core/types.hpp"

#include <type_traits>

namespace moeproxy::parallel {

// Whether `cfg` compresses anything: int8 and a layout with a compressed path (separation,
// or an expert group of more than one rank). Other layouts run, and send, as uncompressed.
bool compresses_transfers(const RunConfig& cfg);

class RowCodec {
 public:
  explicit RowCodec(CommCompression mode) : mode_(mode) {}

  bool compresses() const { return mode_ != CommCompression::none; }
  // Floats one row of d values takes on the wire.
  int wire_width(int d) const;

  // The wire rows [n, wire_width(d)] of rows [n, d], in the space's memory: `rows` itself
  // without compression, else this codec's send scratch, valid until the next encode.
  // Enqueued on `space`: fence before the data leaves.
  Matrix encode(const ExecSpace& space, const Matrix& rows);
  // Wire rows of their own for rows [n, d], for transfers that stay in flight while other
  // rows are encoded (expert_overlap.hpp): `rows` itself without compression, else the
  // front of `buffer`, grown as needed. encode_into fills (a slab of) it.
  Matrix wire_buffer(Matrix& buffer, const Matrix& rows, const char* label) const;
  void encode_into(const ExecSpace& space, const Matrix& rows, const Matrix& wire) const;
  // Where wire rows for rows [n, d] can arrive: `rows` itself without compression, else this
  // codec's receive scratch, valid until the next decode from host memory or receive_buffer.
  Matrix receive_buffer(const Matrix& rows);
  // Bytes of its send and receive scratch.
  std::uint64_t buffer_bytes() const { return (send_.span() + receive_.span()) * sizeof(float); }
  // rows [n, d] = what `wire` [n, wire_width(d)] (host or device memory) carries.
  template <class Wire>
  void decode(const ExecSpace& space, const Wire& wire, const Matrix& rows) {
    if (!compresses()) {
      if (wire.data() != rows.data()) Kokkos::deep_copy(rows, wire);
      return;
    }
    if constexpr (std::is_same<typename Wire::memory_space, MemSpace>::value) {
      dequantize(space, wire, rows);
    } else {
      const Matrix staged = receive_buffer(rows);
      Kokkos::deep_copy(staged, wire);
      dequantize(space, staged, rows);
    }
  }

 private:
  void dequantize(const ExecSpace& space, const ConstMatrix& wire, const Matrix& rows);

  CommCompression mode_;
  Matrix send_, receive_;  // scratch, grown as needed
};

}  // namespace moeproxy::parallel
