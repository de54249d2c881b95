# Analysis tools (analysis/), job scripts (job-scripts/) and a sweep through a real Slurm.
# Included by tests/CMakeLists.txt. The tools read files the app writes in the fixture
# analysis/runs, not hand-made ones (the incomplete file is a real one with its flag reset);
# each test takes a few seconds on 2 cores.
set(MOEPROXY_ANALYSIS_TEST ${CMAKE_CURRENT_LIST_DIR}/analysis_test.sh)
set(MOEPROXY_ANALYSIS_OUT ${CMAKE_CURRENT_BINARY_DIR}/analysis-out)
# No __pycache__ written into the source tree by the tests.
set(MOEPROXY_ANALYSIS_ENV "OMP_NUM_THREADS=1;OMP_PROC_BIND=false;KOKKOS_DISABLE_WARNINGS=1;PYTHONDONTWRITEBYTECODE=1")

function(moeproxy_add_analysis_test case)
  add_test(NAME analysis/${case}
           COMMAND bash ${MOEPROXY_ANALYSIS_TEST} ${case} $<TARGET_FILE:moeproxy> ${MPIEXEC_EXECUTABLE}
                   ${CMAKE_SOURCE_DIR} ${MOEPROXY_ANALYSIS_OUT})
  set_tests_properties(analysis/${case} PROPERTIES ENVIRONMENT "${MOEPROXY_ANALYSIS_ENV}" TIMEOUT 120 ${ARGN})
endfunction()

# Result files of several layouts (dp = 1, 2, 4 and a dense model) plus an incomplete one.
moeproxy_add_analysis_test(runs FIXTURES_SETUP moeproxy_analysis_runs PROCESSORS 4)
foreach(case report report-refuses accept-pass accept-fail accept-usage compare)
  moeproxy_add_analysis_test(${case} FIXTURES_REQUIRED moeproxy_analysis_runs)
endforeach()
moeproxy_add_analysis_test(predict-again)
moeproxy_add_analysis_test(job-scripts-parse)
moeproxy_add_analysis_test(seed-scripts)
moeproxy_add_analysis_test(seed-predictions TIMEOUT 300)
moeproxy_add_analysis_test(sweep PROCESSORS 2)

# Exit code 77 (no slurm-wlm/munge, not root, daemons would not start) shows as skipped.
add_test(NAME analysis/slurm-sweep
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/slurm_sweep_test.sh $<TARGET_FILE:moeproxy>
                 ${CMAKE_SOURCE_DIR} ${MOEPROXY_ANALYSIS_OUT}/slurm)
set_tests_properties(analysis/slurm-sweep PROPERTIES ENVIRONMENT "${MOEPROXY_ANALYSIS_ENV}"
                     SKIP_RETURN_CODE 77 TIMEOUT 240 PROCESSORS 2 RESOURCE_LOCK moeproxy_slurm)

# Checkpoints: the NumPy model written from docs/model.md and docs/checkpoint.md alone
# reproduces runs from exported checkpoints within 1e-4 (fp32), and analysis/convert-checkpoint
# maps a synthetic Mixtral-style safetensors state dict exactly (tests/analysis/checkpoint_test.sh).
foreach(case numpy-tiny-moe numpy-tiny-moe8 numpy-tiny-dense numpy-zipf-capacity convert)
  add_test(NAME analysis/checkpoint/${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/checkpoint_test.sh ${case} $<TARGET_FILE:moeproxy>
                   ${CMAKE_SOURCE_DIR} ${MOEPROXY_ANALYSIS_OUT}/checkpoint)
  set_tests_properties(analysis/checkpoint/${case} PROPERTIES ENVIRONMENT "${MOEPROXY_ANALYSIS_ENV}" TIMEOUT 180)
endforeach()
