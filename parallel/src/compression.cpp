#include "moeproxy/parallel/compression.hpp"

#include <string>

#include "moeproxy/core/kernels.hpp"

namespace moeproxy::parallel {

bool compresses_transfers(const RunConfig& cfg) {
  return cfg.parallel.comm_compression != CommCompression::none &&
         (cfg.parallel.attn_ranks > 0 || cfg.parallel.ep > 1);
}

int RowCodec::wire_width(int d) const { return compresses() ? int8_row_words(d) : d; }

Matrix RowCodec::encode(const ExecSpace& space, const Matrix& rows) {
  if (!compresses()) return rows;
  const int n = static_cast<int>(rows.extent(0)), d = static_cast<int>(rows.extent(1));
  const Matrix wire = reserved_rows(send_, n, wire_width(d), "moeproxy::compression::send");
  quantize_int8_rows(space, rows, wire);
  return wire;
}

Matrix RowCodec::wire_buffer(Matrix& buffer, const Matrix& rows, const char* label) const {
  if (!compresses()) return rows;
  const int n = static_cast<int>(rows.extent(0)), d = static_cast<int>(rows.extent(1));
  return reserved_rows(buffer, n, wire_width(d), label);
}

void RowCodec::encode_into(const ExecSpace& space, const Matrix& rows, const Matrix& wire) const {
  if (compresses()) quantize_int8_rows(space, rows, wire);
}

Matrix RowCodec::receive_buffer(const Matrix& rows) {
  if (!compresses()) return rows;
  const int n = static_cast<int>(rows.extent(0)), d = static_cast<int>(rows.extent(1));
  return reserved_rows(receive_, n, wire_width(d), "moeproxy::compression::receive");
}

void RowCodec::dequantize(const ExecSpace& space, const ConstMatrix& wire, const Matrix& rows) {
  dequantize_int8_rows(space, wire, rows);
}

}  // namespace moeproxy::parallel
