// `dslens diagnose FILE...`: convergence summary of MCMC output, either Stan CSV files (one per
// chain) or a dslens draws.npy with its draws.json sidecar (and stats.npy beside it, if present).
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "command.h"
#include "dslens/core/errors.h"
#include "dslens/samplers/diagnostics.h"
#include "dslens/samplers/draws_io.h"
#include "dslens/samplers/stan_csv.h"
#include "dslens/samplers/summary.h"

namespace dslens::app {
namespace diagnose_detail {

namespace fs = std::filesystem;

struct Input {
  std::string source;  // "stan-csv" or "dslens-npy"
  std::vector<std::string> files;
  std::vector<std::string> names;
  torch::Tensor draws;   // [chains, draws, columns]
  torch::Tensor energy;  // [chains, draws] or undefined
  torch::Tensor divergent;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The first of `candidates` among `names`, as [chains, draws] of `values`; undefined if none.
torch::Tensor find_column(const std::vector<std::string>& names, const torch::Tensor& values,
                          std::initializer_list<const char*> candidates) {
  for (const char* c : candidates) {
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == c) return values.select(2, static_cast<int64_t>(i));
    }
  }
  return {};
}

Input load(const std::vector<std::string>& files) {
  Input in;
  in.files = files;
  const bool any_npy =
      std::any_of(files.begin(), files.end(), [](auto& f) { return ends_with(f, ".npy"); });
  if (any_npy) {
    if (files.size() != 1) {
      throw InvalidArgument("give one draws.npy (all chains are in it), or Stan CSV files only");
    }
    in.source = "dslens-npy";
    const auto d = samplers::read_draws(files[0]);
    in.names = d.names;
    in.draws = d.values;
    // Sampler statistics beside the draws, when present.
    const auto stats_path = (fs::path(files[0]).parent_path() / "stats.npy").string();
    if (fs::path(files[0]).filename() != "stats.npy" && fs::exists(stats_path) &&
        fs::exists(samplers::sidecar_path(stats_path))) {
      const auto s = samplers::read_stats(stats_path);
      if (s.chains() == d.chains() && s.draws() == d.draws()) {
        in.energy = find_column(s.names, s.values, {"energy__", "energy"});
        in.divergent = find_column(s.names, s.values, {"divergent__", "divergent", "diverging"});
      }
    }
    if (!in.energy.defined()) in.energy = find_column(in.names, in.draws, {"energy__"});
    if (!in.divergent.defined()) in.divergent = find_column(in.names, in.draws, {"divergent__"});
  } else {
    in.source = "stan-csv";
    const auto c = samplers::read_stan_csv_chains(files);
    in.names = c.names;
    in.draws = c.draws;
    in.energy = find_column(in.names, in.draws, {"energy__"});
    in.divergent = find_column(in.names, in.draws, {"divergent__"});
  }
  return in;
}

int run_diagnose(int argc, char** argv) {
  cxxopts::Options options(
      argv[0],
      "Convergence diagnostics (R-hat, bulk/tail ESS, MCSE) of MCMC draws:\n"
      "  Stan CSV files, one per chain, or a dslens draws.npy with its sidecar.");
  options.add_options()("json", "Print JSON instead of a table")(
      "files", "Stan CSV files or one draws.npy", cxxopts::value<std::vector<std::string>>());
  options.parse_positional({"files"});
  options.positional_help("FILE...");
  cxxopts::ParseResult result;
  if (!parse_or_help(options, argc, argv, result)) return 0;
  if (!result.count("files")) throw InvalidArgument("no input files (see --help)");
  const auto in = load(result["files"].as<std::vector<std::string>>());

  const auto rows = samplers::summarize(in.draws, in.names);
  const int64_t chains = in.draws.size(0), draws = in.draws.size(1);
  std::vector<double> ebfmi;
  if (in.energy.defined()) ebfmi = samplers::ebfmi(in.energy);
  int64_t divergences = -1;
  std::vector<int64_t> per_chain;
  if (in.divergent.defined()) {
    per_chain = samplers::divergences_per_chain(in.divergent);
    divergences = samplers::count_divergences(in.divergent);
  }

  if (result.count("json")) {
    nlohmann::json j = {{"source", in.source},
                        {"files", in.files},
                        {"chains", chains},
                        {"draws_per_chain", draws},
                        {"summary", samplers::summary_json(rows)}};
    if (divergences >= 0) {
      j["divergences"] = divergences;
      j["divergences_per_chain"] = per_chain;
    }
    if (!ebfmi.empty()) {
      auto e = nlohmann::json::array();
      for (double v : ebfmi) e.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json());
      j["ebfmi"] = e;
    }
    std::cout << j.dump(2) << std::endl;
    return 0;
  }

  std::cout << chains << " chain" << (chains == 1 ? "" : "s") << " of " << draws << " draws ("
            << (in.source == "stan-csv" ? "Stan CSV" : "dslens draws") << ")\n\n";
  std::cout << samplers::summary_text(rows);
  if (divergences >= 0) {
    const double total = static_cast<double>(chains * draws);
    std::ostringstream pct;
    pct << std::fixed << std::setprecision(2) << (total > 0 ? 100.0 * divergences / total : 0.0);
    std::cout << "\nDivergent transitions: " << divergences << " of " << chains * draws << " ("
              << pct.str() << " %)\n";
  }
  if (!ebfmi.empty()) {
    std::cout << "E-BFMI per chain:";
    bool low = false;
    for (double v : ebfmi) {
      std::ostringstream s;
      s << std::fixed << std::setprecision(3) << v;
      std::cout << " " << (std::isfinite(v) ? s.str() : "NA");
      low = low || (std::isfinite(v) && v < 0.3);
    }
    std::cout << (low ? "  (below 0.3: the momentum resampling explores the energy poorly)" : "")
              << "\n";
  }
  double worst_rhat = 0;
  for (const auto& r : rows) {
    if (!samplers::is_sampler_column(r.name) && std::isfinite(r.rhat)) {
      worst_rhat = std::max(worst_rhat, r.rhat);
    }
  }
  if (worst_rhat > 1.01) {
    std::cout << "Warning: R-hat above 1.01 (max " << std::fixed << std::setprecision(3)
              << worst_rhat << "); the chains have not mixed.\n";
  }
  return 0;
}

}  // namespace diagnose_detail

DSLENS_COMMAND(diagnose, "Convergence diagnostics of MCMC draws (Stan CSV or draws.npy)",
               diagnose_detail::run_diagnose);

}  // namespace dslens::app
