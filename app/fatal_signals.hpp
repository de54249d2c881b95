#pragma once
// A rank that crashes names itself before it dies. The MPI launcher reports only a PID and
// a signal; on a thousand ranks the rank number and host are what a person needs at 3 a.m.

namespace moeproxy {

// Installs handlers for the signals of a crash (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT)
// that write "moeproxy: rank R (pid P on HOST) died: SIGNAME" to stderr and re-raise the
// signal to whatever handled it before (the default action, a sanitizer's or the MPI
// library's handler), so the launcher still sees the crash and ends the job. Call once,
// after MPI_Init.
void report_fatal_signals(int rank);

}  // namespace moeproxy
