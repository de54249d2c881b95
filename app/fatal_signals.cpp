#include "fatal_signals.hpp"

#include <unistd.h>

#include <csignal>
#include <cstring>
#include <iterator>
#include <string>

namespace moeproxy {
namespace {

struct Fatal {
  int signal;
  const char* name;
};
constexpr Fatal fatal_signals[] = {{SIGSEGV, "SIGSEGV (invalid memory access)"},
                                   {SIGBUS, "SIGBUS (bus error)"},
                                   {SIGFPE, "SIGFPE (arithmetic exception)"},
                                   {SIGILL, "SIGILL (illegal instruction)"},
                                   {SIGABRT, "SIGABRT (abort)"}};

// Formatted before any signal arrives: a handler may only call async-signal-safe functions.
char prefix[256];
std::size_t prefix_length = 0;
// What handled each signal before us (the default action, a sanitizer, the MPI library's
// transport): it gets the signal next, so that its report and its way of dying are kept.
struct sigaction previous[std::size(fatal_signals)];

void on_fatal(int signal) {
  std::size_t i = 0;
  while (fatal_signals[i].signal != signal) ++i;
  const char* name = fatal_signals[i].name;
  ssize_t ignored = write(STDERR_FILENO, prefix, prefix_length);
  ignored = write(STDERR_FILENO, name, std::strlen(name));
  ignored = write(STDERR_FILENO, "\n", 1);
  static_cast<void>(ignored);
  sigaction(signal, &previous[i], nullptr);
  std::raise(signal);
  // The previous handler returned instead of ending the process: the default action does.
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

}  // namespace

void report_fatal_signals(int rank) {
  char host[128] = "unknown host";
  gethostname(host, sizeof host - 1);
  const std::string text =
      "moeproxy: rank " + std::to_string(rank) + " (pid " + std::to_string(getpid()) + " on " + host + ") died: ";
  prefix_length = text.copy(prefix, sizeof prefix - 1);
  struct sigaction action {};
  action.sa_handler = on_fatal;
  sigemptyset(&action.sa_mask);
  for (std::size_t i = 0; i < std::size(fatal_signals); ++i) sigaction(fatal_signals[i].signal, &action, &previous[i]);
}

}  // namespace moeproxy
