// dslens: differentiable strong-lens modelling. Dispatches to the registered subcommands and turns
// library exceptions into messages and exit codes (2: bad input, 128 + N: stopped by signal N with
// a checkpoint, 1: other failures).
#include <c10/util/Exception.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <limits>

#include "command.h"
#include "dslens/core/errors.h"
#include "dslens/core/logging.h"
#include "dslens/core/version.h"
#include "stop_signal.h"

namespace {

void print_usage(std::ostream& os) {
  os << "dslens " << dslens::version()
     << " - differentiable strong gravitational lens modelling\n\n"
     << "Usage: dslens COMMAND [OPTIONS]\n       dslens COMMAND --help\n\nCommands:\n";
  auto table = dslens::app::commands();
  std::sort(table.begin(), table.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (const auto& c : table)
    os << "  " << std::left << std::setw(12) << c.name << c.summary << "\n";
  os << "\nOptions:\n  -h, --help     Show this help\n  -v, --version  Show the version\n";
}

int run_command(const dslens::app::Command& command, int argc, char** argv) {
  // argv[0] becomes "dslens NAME" so that cxxopts prints "Usage: dslens NAME ...".
  std::string program = "dslens " + command.name;
  std::vector<char*> args;
  args.push_back(program.data());
  for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
  return command.run(static_cast<int>(args.size()), args.data());
}

}  // namespace

int main(int argc, char** argv) {
  // LibTorch's CPU thread pool (and the physics kernels' at::parallel_for) is OpenMP. libgomp's
  // default lets idle threads spin; when the cores are shared (ctest -j, several fits on a node,
  // any other load) a spinning thread waits for a descheduled one and a fit runs 4x slower
  // (measured: MAP on a 40x40 mock, 2 threads, machine under load: 59 s spinning, 16 s passive).
  // libgomp reads its settings when it is loaded, before main(), so set them and re-execute once.
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("DSLENS_NO_REEXEC")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    setenv("DSLENS_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the defaults
  }
#if defined(__GLIBC__)
  // Batched [B, N] tensors are tens of MB. glibc serves blocks above its mmap threshold with fresh
  // mmap()s and unmaps them on free, so every intermediate tensor is page-faulted in anew on every
  // call; on virtual machines those faults cost more than the arithmetic (bench simulate, batch 16:
  // forward 85 -> 25 ms). Keep freed memory in the heap for reuse instead.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif
  dslens::init_logging("info");
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "help")) {
    print_usage(std::cout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "-v") || !std::strcmp(argv[1], "--version")) {
    std::cout << "dslens " << dslens::version() << "\n";
    return 0;
  }
  for (const auto& command : dslens::app::commands()) {
    if (command.name != argv[1]) continue;
    try {
      return run_command(command, argc, argv);
    } catch (const dslens::Interrupted& e) {
      // Stopped by a signal where --resume continues (stop_signal.h): the shell's convention for
      // a process ended by signal N, 128 + N, so that scripts and SLURM see it as stopped.
      std::cerr << "dslens " << command.name << ": " << e.what() << "\n";
      const int sig = dslens::app::stop_signal();
      return sig > 0 ? 128 + sig : 1;
    } catch (const dslens::InputError& e) {
      std::cerr << "dslens " << command.name << ": error: " << e.what() << "\n";
      return 2;
    } catch (const dslens::Error& e) {
      std::cerr << "dslens " << command.name << ": error: " << e.what() << "\n";
      return 1;
    } catch (const c10::Error& e) {
      std::cerr << "dslens " << command.name << ": internal error: " << e.what_without_backtrace()
                << "\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "dslens " << command.name << ": error: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "dslens: unknown command '" << argv[1] << "'\n\n";
  print_usage(std::cerr);
  return 2;
}
