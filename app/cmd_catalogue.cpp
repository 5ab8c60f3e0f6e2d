// `dslens catalogue RUN... [--out FILE.csv|FILE.fits]`: one row per lens of finished `dslens fit`
// outputs (catalogue.h), e.g. the shards of a SLURM array (runs/catalogue-123/shard-*). Each RUN
// is a fit output folder or a folder searched for them; fit outputs there that have not finished
// (a checkpoint folder, no index.json) are listed on stderr, with how to continue them.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "catalogue.h"
#include "command.h"
#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"

namespace dslens::app {
namespace catalogue_command {

namespace fs = std::filesystem;

struct Found {
  std::vector<fs::path> finished;    // folders with index.json
  std::vector<fs::path> unfinished;  // folders with checkpoint/ and no index.json
};

void search(const fs::path& root, Found& found) {
  if (!fs::is_directory(root))
    throw FileError("'" + root.string() +
                    "' is not a folder (a dslens fit output, or one holding them)");
  const auto visit = [&found](const fs::path& dir) {
    if (fs::exists(dir / "index.json")) {
      found.finished.push_back(dir);
      return true;
    }
    if (fs::is_directory(dir / "checkpoint") && fs::exists(dir / "fit.log")) {
      found.unfinished.push_back(dir);
      return true;
    }
    return false;
  };
  if (visit(root)) return;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    if (!it->is_directory()) continue;
    // A fit output's own sub-folders (lenses, checkpoints) hold no further runs.
    if (visit(it->path())) it.disable_recursion_pending();
  }
}

int run(int argc, char** argv) {
  cxxopts::Options options(
      argv[0],
      "One row per lens of finished dslens fit outputs, as CSV or a FITS table (medians, 68 %\n"
      "  intervals, R-hat and MAP values of the scalar parameters and of q_*, gamma_ext_*,\n"
      "  magnification; fit quality), e.g. the shards of a SLURM array");
  options.add_options()("o,out",
                        "file to write: a FITS binary table when it ends in .fits or .fit, CSV "
                        "otherwise (default: CSV on standard output)",
                        cxxopts::value<std::string>())("overwrite",
                                                       "replace an existing --out file")(
      "runs", "fit output folders, or folders searched for them",
      cxxopts::value<std::vector<std::string>>());
  options.parse_positional({"runs"});
  options.positional_help("RUN...");
  cxxopts::ParseResult args;
  if (!parse_or_help(options, argc, argv, args)) return 0;
  if (!args.count("runs")) throw InputError("no fit output folders given (see --help)");
  if (!args.unmatched().empty())
    throw InputError("unexpected argument '" + args.unmatched().front() + "' (see --help)");
  const std::string out = args.count("out") ? args["out"].as<std::string>() : "";
  if (!out.empty() && fs::exists(out) && !args.count("overwrite"))
    throw InputError("'" + out + "' already exists; choose another --out, or pass --overwrite");

  Found found;
  for (const auto& r : args["runs"].as<std::vector<std::string>>()) search(r, found);
  std::sort(found.finished.begin(), found.finished.end());
  found.finished.erase(std::unique(found.finished.begin(), found.finished.end()),
                       found.finished.end());
  std::vector<fs::path> lens_dirs;
  for (const auto& run : found.finished) {
    for (const auto& d : fit_lens_folders(run)) lens_dirs.push_back(d);
  }
  if (lens_dirs.empty() && found.unfinished.empty())
    throw InputError("no dslens fit output (a folder with index.json) under the given folders");
  const Catalogue table = catalogue_csv(lens_dirs);
  const std::string extension = fs::path(out).extension().string();
  if (out.empty()) {
    std::cout << table.csv << std::flush;
  } else if (extension == ".fits" || extension == ".fit") {
    write_catalogue_fits(out, table);
  } else {
    write_text_atomically(out, table.csv);
  }
  std::cerr << "catalogue: " << lens_dirs.size() << " lens(es) from " << found.finished.size()
            << " finished fit output(s)" << (out.empty() ? "" : " -> " + out) << "\n";
  std::map<std::string, int> rows_of_lens;
  for (const auto& lens : table.lenses) ++rows_of_lens[lens];
  for (const auto& [lens, n] : rows_of_lens) {
    if (n > 1)
      std::cerr << "catalogue: warning: lens '" << lens << "' has " << n
                << " rows (fitted in several runs); every row is kept\n";
  }
  if (!found.unfinished.empty()) {
    std::cerr << "catalogue: warning: " << found.unfinished.size()
              << " fit output(s) have not finished and are not in the table (continue each with "
                 "dslens fit ... --out FOLDER --resume):\n";
    for (const auto& u : found.unfinished) std::cerr << "  " << u.string() << "\n";
  }
  return 0;
}

}  // namespace catalogue_command

DSLENS_COMMAND(catalogue, "One row per lens of finished fit outputs (CSV or FITS)",
               catalogue_command::run);

}  // namespace dslens::app
