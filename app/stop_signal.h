// SIGINT and SIGTERM during the long commands (fit, mock-study, train-vae). The first signal asks
// the run to stop where it can be continued: the sampler saves a snapshot and the VAE trainer a
// checkpoint at the next point where that is possible, then Interrupted unwinds to main(), which
// exits with 128 + the signal's number. A second signal ends the process at once (the handler is
// reset to the default after the first). SLURM sends SIGTERM at a job's time limit (and, with
// `#SBATCH --signal=B:TERM@SECONDS`, that long before it), so a shard stops with a checkpoint
// that --resume continues.
#pragma once
#include <string>

namespace dslens::app {

// Installs the handlers for its lifetime (nested guards share the outermost one's).
class StopOnSignal {
 public:
  StopOnSignal();
  ~StopOnSignal();
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
};

// Whether a stop signal has arrived, and which (0: none).
bool stop_requested();
int stop_signal();

// Throws Interrupted ("<what> stopped by SIGTERM ...") when a stop has been requested: for loops
// that have no snapshot of their own and are continued from their last saved stage.
void throw_if_stop_requested(const std::string& what);

}  // namespace dslens::app
