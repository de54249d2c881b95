# Two commands on a fresh Debian 12 machine: `make run` and `make test`.
# Dependencies (Debian packages, Kokkos + Kokkos Kernels 3.4.01) are installed on first use
# into .deps/ and reused afterwards.

RANKS ?= 4
DECK ?= inputs/quickstart.toml
JOBS ?= $(shell nproc)
MPIEXEC ?= mpiexec
export OMP_NUM_THREADS ?= 1
export OMP_PROC_BIND ?= false

.PHONY: all deps deps-cuda host cuda run test sanitize clean help

all: host

help:
	@echo "make run       bootstrap, build the CPU variant, run $(DECK) on $(RANKS) MPI ranks"
	@echo "make test      bootstrap, build the CPU variant, run every test (ctest)"
	@echo "make cuda      build the CUDA variant (Kokkos CUDA sm_90 + OpenMP) into build/cuda"
	@echo "make sanitize  build with ASan + UBSan into build/sanitize and run the tests"
	@echo "variables: RANKS=$(RANKS) DECK=$(DECK) JOBS=$(JOBS)"

deps:
	@bash cmake/bootstrap-deps.sh host

deps-cuda:
	@bash cmake/bootstrap-deps.sh cuda

build/host/build.ninja: CMakeLists.txt CMakePresets.json | deps
	cmake --preset host > /dev/null

host: deps build/host/build.ninja
	cmake --build build/host -j $(JOBS)

run: host
	$(MPIEXEC) -n $(RANKS) build/host/app/moeproxy run $(DECK)

test: host
	cd build/host && ctest --output-on-failure -j $(JOBS)

cuda: deps-cuda
	cmake --preset cuda > /dev/null
	cmake --build build/cuda -j $(JOBS)

sanitize: deps
	cmake --preset sanitize > /dev/null
	cmake --build build/sanitize -j $(JOBS)
	cd build/sanitize && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf build
