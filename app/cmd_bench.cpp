// `dslens bench NAME ...`: throughput benchmarks, each registered with DSLENS_BENCH in its own
// file.
#include <iomanip>
#include <iostream>

#include "command.h"
#include "dslens/core/errors.h"

namespace dslens::app {
namespace {

void print_bench_usage(std::ostream& os) {
  os << "Usage: dslens bench NAME [OPTIONS]   (dslens bench NAME --help)\n\nBenchmarks:\n";
  for (const auto& b : benches())
    os << "  " << std::left << std::setw(12) << b.name << b.summary << "\n";
}

int run_bench(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_bench_usage(std::cout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& b : benches()) {
    if (b.name != argv[1]) continue;
    std::string program = "dslens bench " + b.name;
    std::vector<char*> args{program.data()};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    return b.run(static_cast<int>(args.size()), args.data());
  }
  throw InvalidArgument("unknown benchmark '" + std::string(argv[1]) +
                        "' (see dslens bench --help)");
}

}  // namespace

DSLENS_COMMAND(bench, "Throughput benchmarks (simulate, vae, sampler, fit)", run_bench);

}  // namespace dslens::app
