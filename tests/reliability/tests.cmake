# Reliability: bad input refused quickly and cleanly (tests/cli_test.sh), a decode soak
# without memory growth. Included from tests/CMakeLists.txt.

foreach(case layers-zero batch-negative hidden-absurd topk-experts dp-batch tp-three
             precision-unknown precision-fp16 compression-unknown compression-one-rank verify-file-missing checkpoint-missing
             checkpoint-not-hdf5 checkpoint-attribute checkpoint-shape checkpoint-dataset-missing
             output-proc output-parent-file output-directory output-bare-name output-empty output-colon
             toml-unterminated toml-binary toml-header-key set-no-equals set-empty-value set-not-number
             memory-model memory-batch no-preflight
             expert-map-duplicate expert-map-missing expert-map-length expert-map-layers heads-sum heads-mxn
             replicas-dp replicas-ep fail-rank-range fail-rank-ffn fail-step fail-no-replica fail-step-alone
             balance-threshold-negative balance-threshold-one balance-interval-zero balance-no-separation
             balance-machine-missing ep-chunks-zero ep-chunks-no-ep ep-chunks-separation)
  add_test(NAME reliability/cli/${case}
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/cli_test.sh ${case} $<TARGET_FILE:moeproxy>
                   ${MPIEXEC_EXECUTABLE} ${CMAKE_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/cli-out)
  set_tests_properties(reliability/cli/${case} PROPERTIES ENVIRONMENT "${MOEPROXY_TEST_ENV}" TIMEOUT 120)
endforeach()

# 1000 decode steps against 100 on 2 ranks: no memory growth beyond what the longer run
# allocates by design (tests/reliability/soak_test.sh explains the margin).
add_test(NAME reliability/soak/decode-1000
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/reliability/soak_test.sh $<TARGET_FILE:moeproxy>
                 ${MPIEXEC_EXECUTABLE} ${CMAKE_CURRENT_BINARY_DIR}/soak-out)
set_tests_properties(reliability/soak/decode-1000 PROPERTIES ENVIRONMENT "${MOEPROXY_TEST_ENV}"
                                                             PROCESSORS 2 TIMEOUT 300 SKIP_RETURN_CODE 77)

# A rank dying mid-run (crash, or SIGKILL as from the OOM killer) ends the job within
# seconds, exit code below 128, no results file (tests/reliability/fault_test.sh).
foreach(case segv kill)
  add_test(NAME reliability/fault/${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/reliability/fault_test.sh ${case} $<TARGET_FILE:moeproxy>
                   ${MPIEXEC_EXECUTABLE} ${CMAKE_CURRENT_BINARY_DIR}/fault-out)
  set_tests_properties(reliability/fault/${case} PROPERTIES ENVIRONMENT "${MOEPROXY_TEST_ENV}" PROCESSORS 2 TIMEOUT 300)
endforeach()
