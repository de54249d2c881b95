# Two commands on a fresh Debian 12 machine: `make run` and `make test`.
# Dependencies (Debian packages, Kokkos + Kokkos Kernels 3.4.01) are installed on first use
# into .deps/ and reused afterwards.

RANKS ?= 4
DECK ?= inputs/quickstart.toml
JOBS ?= $(shell nproc)
MPIEXEC ?= mpiexec
export OMP_NUM_THREADS ?= 1
export OMP_PROC_BIND ?= false

FUZZ_SECONDS ?= 60
FUZZ_DIR := build/fuzz

.PHONY: all deps deps-cuda host cuda run test sanitize fuzz clean help

all: host

help:
	@echo "make run       bootstrap, build the CPU variant, run $(DECK) on $(RANKS) MPI ranks"
	@echo "make test      bootstrap, build the CPU variant, run every test (ctest)"
	@echo "make cuda      build the CUDA variant (Kokkos CUDA sm_90 + OpenMP) into build/cuda"
	@echo "make sanitize  build with ASan + UBSan into build/sanitize and run the tests"
	@echo "make fuzz      fuzz the deck reader with libFuzzer (clang) for FUZZ_SECONDS=$(FUZZ_SECONDS) s"
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

# Leak checking is off: MPICH and its transports keep allocations until exit by design.
# Kokkos in .deps/host is not instrumented; everything moeproxy compiles is.
sanitize: deps
	cmake --preset sanitize > /dev/null
	cmake --build build/sanitize -j $(JOBS)
	cd build/sanitize && ASAN_OPTIONS=detect_leaks=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# The deck reader alone (toml++ is header-only), built by clang with libFuzzer. toml++'s
# debug assertions are off, as in the Release build, because one of them fires on a
# precondition toml++ 3.3 does not check itself (docs/reliability.md).
$(FUZZ_DIR)/fuzz_deck: tests/reliability/fuzz_deck.cpp io/src/deck.cpp core/src/config.cpp \
                       io/include/moeproxy/io/deck.hpp core/include/moeproxy/core/config.hpp
	@command -v clang++ > /dev/null && ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a > /dev/null 2>&1 \
	  || { echo "make fuzz needs clang and libFuzzer: apt-get install clang libclang-rt-14-dev"; exit 1; }
	mkdir -p $(FUZZ_DIR)
	clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  -DTOML_HEADER_ONLY=1 '-DTOML_ASSERT(expr)=static_cast<void>(0)' -Icore/include -Iio/include \
	  $(filter %.cpp,$^) -o $@

fuzz: $(FUZZ_DIR)/fuzz_deck
	mkdir -p $(FUZZ_DIR)/corpus
	cp inputs/*.toml tests/decks/*.toml tests/reliability/fuzz-seeds/* $(FUZZ_DIR)/corpus/
	$(FUZZ_DIR)/fuzz_deck -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	  -dict=tests/reliability/deck.dict -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus

clean:
	rm -rf build
