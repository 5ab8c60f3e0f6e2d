#include "stop_signal.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "dslens/core/errors.h"

namespace dslens::app {
namespace {

volatile std::sig_atomic_t g_signal = 0;
int g_depth = 0;  // nested guards (mock-study runs fit in-process)
struct sigaction g_previous_int, g_previous_term;

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  // Only async-signal-safe calls here (write, not spdlog).
  static const char message[] =
      "\ndslens: stop requested; stopping where the run can be continued (--resume). Send the "
      "signal again to quit at once.\n";
  const ssize_t ignored = write(STDERR_FILENO, message, sizeof message - 1);
  (void)ignored;
}

}  // namespace

StopOnSignal::StopOnSignal() {
  if (g_depth++ > 0) return;
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESETHAND: the default action again after the first signal, so a second one kills.
  // SA_RESTART: blocking calls (file writes) resume instead of failing with EINTR.
  action.sa_flags = SA_RESETHAND | SA_RESTART;
  sigaction(SIGINT, &action, &g_previous_int);
  sigaction(SIGTERM, &action, &g_previous_term);
}

StopOnSignal::~StopOnSignal() {
  if (--g_depth > 0) return;
  sigaction(SIGINT, &g_previous_int, nullptr);
  sigaction(SIGTERM, &g_previous_term, nullptr);
}

bool stop_requested() {
  return g_signal != 0;
}

int stop_signal() {
  return static_cast<int>(g_signal);
}

void throw_if_stop_requested(const std::string& what) {
  if (!stop_requested()) return;
  throw Interrupted(what + " stopped by " + (stop_signal() == SIGINT ? "SIGINT" : "SIGTERM"));
}

}  // namespace dslens::app
