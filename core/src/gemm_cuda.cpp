#include <cublas_v2.h>

#include <stdexcept>
#include <string>

#include "gemm_cublas.hpp"

namespace moeproxy::cublas {

namespace {

void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("moeproxy: ") + call + " failed: " + cublasGetStatusString(status));
}

// One handle per process, created on first use and destroyed when Kokkos finalizes (while
// the CUDA context it belongs to still exists).
cublasHandle_t handle() {
  static const cublasHandle_t h = [] {
    cublasHandle_t created = nullptr;
    check(cublasCreate(&created), "cublasCreate");
    Kokkos::push_finalize_hook([created] { cublasDestroy(created); });
    return created;
  }();
  return h;
}

}  // namespace

void gemm(const ExecSpace& space, int m, int n, int k, const Operand& a, const Operand& b,
          bool transpose_b, float alpha, float beta, float* c, int ldc) {
  const cublasHandle_t h = handle();
  check(cublasSetStream(h, space.cuda_stream()), "cublasSetStream");
  // cuBLAS is column-major: row-major C = A op(B) is column-major C^T = op(B)^T A^T, so B
  // goes first and the row-major buffers are read as their transposes without copying.
  check(cublasGemmEx(h, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b.data,
                     b.half ? CUDA_R_16F : CUDA_R_32F, b.ld, a.data, a.half ? CUDA_R_16F : CUDA_R_32F, a.ld,
                     &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

}  // namespace moeproxy::cublas
