#pragma once
// cuBLAS behind the GEMM interface (gemm_cuda.cpp), compiled only in the CUDA variant.

#include "moeproxy/core/types.hpp"

namespace moeproxy::cublas {

// Device memory of a row-major matrix operand: fp32 or binary16 values, rows `ld` apart.
struct Operand {
  const void* data = nullptr;
  bool half = false;
  int ld = 0;
};

// Row-major C[m,n] = alpha * A[m,k] * op(B) + beta * C with fp32 accumulation, on the
// stream of `space`. B is [k,n], or [n,k] with transpose_b. C is fp32 with rows ldc apart.
void gemm(const ExecSpace& space, int m, int n, int k, const Operand& a, const Operand& b,
          bool transpose_b, float alpha, float beta, float* c, int ldc);

}  // namespace moeproxy::cublas
