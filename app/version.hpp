#pragma once
// What the binary is: defined in version.cpp, which cmake/git-version.cmake writes at every
// build (not at configure time), so an incremental build after a commit names that commit.

namespace moeproxy::app {

const char* version();
// The commit the binary was built from (12 hex digits), "-dirty" appended when tracked files
// differed from it; "unknown" outside a git checkout.
const char* git_sha();

}  // namespace moeproxy::app
