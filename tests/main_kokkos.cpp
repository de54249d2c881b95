// Catch2 main for the unit tests: Kokkos lives for the whole run. CTest's test discovery
// only lists names, so Kokkos stays off then and its start-up notes cannot pollute the list.
#define CATCH_CONFIG_RUNNER
#include <Kokkos_Core.hpp>
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv)) return rc;
  const auto& config = session.configData();
  if (config.listTestNamesOnly || config.listTests || config.listTags) return session.run();
  Kokkos::ScopeGuard kokkos(argc, argv);
  return session.run();
}
