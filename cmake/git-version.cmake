# Run at build time (app/CMakeLists.txt): writes OUT from IN with the commit of SOURCE_DIR.
# configure_file leaves OUT untouched when its text is unchanged, so a build without a new
# commit recompiles nothing.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                RESULT_VARIABLE failed OUTPUT_VARIABLE MOEPROXY_GIT_SHA OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(failed OR NOT MOEPROXY_GIT_SHA)
  set(MOEPROXY_GIT_SHA "unknown")
else()
  # A results file from a modified tree must not pass for one of the commit.
  execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${SOURCE_DIR}
                  OUTPUT_VARIABLE changes ERROR_QUIET)
  if(changes)
    string(APPEND MOEPROXY_GIT_SHA "-dirty")
  endif()
endif()
configure_file(${IN} ${OUT} @ONLY)
