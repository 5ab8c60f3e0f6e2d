// Subcommands register themselves, so each lives in its own file and main.cpp never changes:
//
//   static int run_simulate(int argc, char** argv);
//   DSLENS_COMMAND(simulate, "Simulate a strong-lens image from a JSON config", run_simulate);
//   DSLENS_BENCH(simulate, "Images per second of the forward model", bench_simulate);
//
// A command receives argv with argv[0] = "dslens NAME" and returns the exit code. It may throw
// dslens exceptions; main() maps InputError to exit 2 and other errors to exit 1.
#pragma once
#include <cxxopts.hpp>

#include <functional>
#include <string>
#include <vector>

#include "dslens/core/device.h"

namespace dslens::app {

using CommandFn = std::function<int(int argc, char** argv)>;

struct Command {
  std::string name;
  std::string summary;
  CommandFn run;
};

std::vector<Command>& commands();
std::vector<Command>& benches();
// Runs a registered command in-process (argv[0] = "dslens NAME"); used by `bench fit` and
// `mock-study` to drive `simulate` and `fit`. Throws InvalidArgument for an unknown name. With
// quiet_stdout what the command prints on std::cout is dropped (its log still goes to stderr), so
// that a caller's --json output is the only thing on stdout.
int run_command(const std::string& name, std::vector<std::string> args, bool quiet_stdout = false);

struct CommandRegistrar {
  CommandRegistrar(std::vector<Command>& table, const char* name, const char* summary,
                   CommandFn fn) {
    table.push_back({name, summary, std::move(fn)});
  }
};

// Options shared by commands that compute: --device, --dtype, --threads, --log-level.
void add_compute_options(cxxopts::Options& options, const std::string& default_dtype = "float64");
// Applies --threads and --log-level and returns the Compute from --device/--dtype.
Compute compute_from(const cxxopts::ParseResult& result);
// `a` quoted for a POSIX shell where it needs to be ('it'\''s'), as is otherwise.
std::string shell_quote(const std::string& a);
// The command line that continues an interrupted run: argv ("dslens NAME" first) quoted for a
// shell, without --overwrite and --stop-after (and its value), with --resume.
std::string resume_command(int argc, char** argv);
// Parses argv; on --help prints the help and returns false (the caller returns 0).
bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& out);

}  // namespace dslens::app

#define DSLENS_REGISTRY_CAT2(a, b) a##b
#define DSLENS_REGISTRY_CAT(a, b) DSLENS_REGISTRY_CAT2(a, b)
#define DSLENS_COMMAND(name, summary, fn)                                            \
  static ::dslens::app::CommandRegistrar DSLENS_REGISTRY_CAT(dslens_command_, name)( \
      ::dslens::app::commands(), #name, summary, fn)
#define DSLENS_BENCH(name, summary, fn)                                            \
  static ::dslens::app::CommandRegistrar DSLENS_REGISTRY_CAT(dslens_bench_, name)( \
      ::dslens::app::benches(), #name, summary, fn)
