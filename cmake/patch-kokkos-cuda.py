#!/usr/bin/env python3
"""Edits a copy of Kokkos 3.4.01 so that it builds with CUDA 13 and runs on Hopper (sm_90).

usage: patch-kokkos-cuda.py KOKKOS_SOURCE_DIR

1. CUDA 13 no longer converts Kokkos' half_t to __half implicitly inside the __half2*
   conversion intrinsics, and dropped __half2double.
2. CUDA 13's cudaMemPrefetchAsync takes a cudaMemLocation and a flags argument.
3. Kokkos 3.4 predates Hopper: add the HOPPER90 arch option (sm_90), otherwise its start-up
   check refuses the sm_80 fallback on an H100.
Each edit checks that it matched, so a different Kokkos source fails loudly instead of
building something half-patched.
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1])


def edit(rel, pattern, repl, count_min=1, regex=True):
    path = root / rel
    text = path.read_text()
    if regex:
        new, n = re.subn(pattern, repl, text)
    else:
        n = text.count(pattern)
        new = text.replace(pattern, repl)
    if n < count_min:
        sys.exit(f"patch-kokkos-cuda: pattern not found in {rel}: {pattern!r}")
    path.write_text(new)


half = "core/src/Cuda/Kokkos_Cuda_Half.hpp"
edit(half, "__half2double(val)", "static_cast<double>(__half2float(__half(val)))", regex=False)
edit(half, r"(__half2(?:float|short_rz|ushort_rz|int_rz|uint_rz|ll_rz|ull_rz))\(val\)",
     r"\1(__half(val))", 7)

edit("core/src/Cuda/Kokkos_CudaSpace.cpp",
     "cudaMemPrefetchAsync(ptr, bytes, space.cuda_device(),\n                                        space.cuda_stream())",
     "cudaMemPrefetchAsync(ptr, bytes, cudaMemLocation{cudaMemLocationTypeDevice, space.cuda_device()},\n"
     "                                        0, space.cuda_stream())", regex=False)

arch = "cmake/kokkos_arch.cmake"
edit(arch, 'KOKKOS_ARCH_OPTION(AMPERE86        GPU  "NVIDIA Ampere generation CC 8.6")',
     'KOKKOS_ARCH_OPTION(AMPERE86        GPU  "NVIDIA Ampere generation CC 8.6")\n'
     'KOKKOS_ARCH_OPTION(HOPPER90        GPU  "NVIDIA Hopper generation CC 9.0")', regex=False)
edit(arch, "CHECK_CUDA_ARCH(AMPERE86  sm_86)",
     "CHECK_CUDA_ARCH(AMPERE86  sm_86)\nCHECK_CUDA_ARCH(HOPPER90  sm_90)", regex=False)
edit("cmake/KokkosCore_config.h.in", "#cmakedefine KOKKOS_ARCH_AMPERE86",
     "#cmakedefine KOKKOS_ARCH_AMPERE86\n#cmakedefine KOKKOS_ARCH_HOPPER90", regex=False)
