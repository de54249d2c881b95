#pragma once
// The one GEMM interface every matmul of the model goes through. Activations are fp32; the
// B operand (a weight) is stored in fp32 or binary16:
//   fp32 B:  C = alpha * A * B + beta * C in fp32.
//   fp16 B:  A is rounded to binary16 first, products are exact and accumulated in fp32:
//            C = alpha * half(A) * B + beta * C. Host and device round identically (half.hpp).
// On the host this is KokkosBlas::gemm (fp16 operands widened to fp32, which is exact); in
// the CUDA variant cuBLAS on the execution space's stream (gemm_cuda.cpp), because Kokkos
// Kernels 3.4 has no tensor-core path for half. Calls enqueue on `space` without fencing.
// A GEMM with a binary16 B works in a binary16 copy of A (on the host also fp32 copies of
// A's rounded values and of B), kept in a GemmScratch; the memory estimate does not count it.

#include <string>
#include <vector>

#include "moeproxy/core/types.hpp"

namespace moeproxy {

using Stack = Kokkos::View<float***, Kokkos::LayoutRight, MemSpace>;
using HalfStack = Kokkos::View<Half***, Kokkos::LayoutRight, MemSpace>;

// A row-major [rows, cols] matrix in fp32 or in binary16: exactly one view is allocated.
struct StoredMatrix {
  ConstMatrix f32;
  ConstHalfMatrix f16;

  StoredMatrix() = default;
  StoredMatrix(const ConstMatrix& m) : f32(m) {}      // NOLINT: implicit on purpose
  StoredMatrix(const ConstHalfMatrix& m) : f16(m) {}  // NOLINT: implicit on purpose
  bool is_half() const { return f16.data() != nullptr; }
  std::size_t extent(int i) const { return is_half() ? f16.extent(i) : f32.extent(i); }
  std::uint64_t bytes() const { return f32.span() * sizeof(float) + f16.span() * sizeof(Half); }
};

// A stack of [rows, cols] matrices, one per local expert, in fp32 or binary16.
struct StoredStack {
  Stack f32;
  HalfStack f16;

  bool is_half() const { return f16.data() != nullptr; }
  std::size_t extent(int i) const { return is_half() ? f16.extent(i) : f32.extent(i); }
  std::uint64_t bytes() const { return f32.span() * sizeof(float) + f16.span() * sizeof(Half); }
  StoredMatrix operator[](int e) const;
};

// The buffers GEMMs with a binary16 B work in, grown as needed, for a caller that runs many
// on one execution space (the forward pass): allocated per call they cost a cudaMalloc and
// cudaFree per GEMM on a GPU and fresh pages on a host. Views into it are valid until the
// next GEMM on it.
class GemmScratch {
 public:
  HalfMatrix rounded_a(int rows, int cols) { return front(rounded_a_, rows, cols); }
  Matrix widened_a(int rows, int cols) { return front(widened_a_, rows, cols); }
  Matrix widened_b(int rows, int cols) { return front(widened_b_, rows, cols); }

 private:
  template <class T>
  using Buffer = Kokkos::View<T*, MemSpace>;
  template <class T>
  static Kokkos::View<T**, Kokkos::LayoutRight, MemSpace> front(Buffer<T>& buffer, int rows, int cols) {
    const std::size_t n = static_cast<std::size_t>(rows) * cols;
    if (buffer.extent(0) < n) buffer = Buffer<T>(Kokkos::view_alloc(Kokkos::WithoutInitializing, "moeproxy::gemm::scratch"), n);
    return Kokkos::View<T**, Kokkos::LayoutRight, MemSpace>(buffer.data(), rows, cols);
  }
  Buffer<Half> rounded_a_;
  Buffer<float> widened_a_, widened_b_;
};

// C = alpha * A * B + beta * C ([m,k] x [k,n] -> [m,n]), or A * B^T with transpose_b. Without
// a scratch, a binary16 B allocates its buffers for the call.
void gemm(const ExecSpace& space, const ConstMatrix& a, const StoredMatrix& b, const Matrix& c,
          GemmScratch& scratch, float alpha = 1.0f, float beta = 0.0f, bool transpose_b = false);
void gemm(const ExecSpace& space, const ConstMatrix& a, const StoredMatrix& b, const Matrix& c,
          float alpha = 1.0f, float beta = 0.0f, bool transpose_b = false);
inline void gemm(const ExecSpace& space, const ConstMatrix& a, const ConstMatrix& b, const Matrix& c,
                 float alpha = 1.0f, float beta = 0.0f, bool transpose_b = false) {
  gemm(space, a, StoredMatrix(b), c, alpha, beta, transpose_b);
}

// `rows` consecutive rows of A multiplied by matrix `index` of a stack.
struct GemmGroup {
  int rows = 0;
  int index = 0;
};
// Grouped GEMM: A's rows split into consecutive groups, group g's rows times b[groups[g].index]
// into the same rows of C (an expert's tokens through that expert). Groups may be empty.
void gemm_grouped(const ExecSpace& space, const ConstMatrix& a, const std::vector<GemmGroup>& groups,
                  const StoredStack& b, const Matrix& c, GemmScratch& scratch);
void gemm_grouped(const ExecSpace& space, const ConstMatrix& a, const std::vector<GemmGroup>& groups,
                  const StoredStack& b, const Matrix& c);

// Binary16 copies of fp32 values (round to nearest even) and fp32 copies of binary16 ones.
void round_into(const ExecSpace& space, const ConstMatrix& src, const HalfMatrix& dst);
void widen_into(const ExecSpace& space, const ConstHalfMatrix& src, const Matrix& dst);

}  // namespace moeproxy
