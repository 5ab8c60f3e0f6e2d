// Stan CSV output (CmdStan, one file per chain): comment lines start with '#', the first other
// non-empty line is the header, then one row of numbers per draw. With save_warmup the warmup rows
// come first and end at the "# Adaptation terminated" comment; they are kept apart.
// Values "nan", "inf" and "-inf" are accepted. Malformed input throws dslens::FileError naming the
// file and line.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

namespace dslens::samplers {

struct StanCsv {
  std::string path;
  std::vector<std::string> names;   // header columns, e.g. lp__, accept_stat__, ..., theta
  torch::Tensor draws;              // [draws, columns] float64, post-warmup rows
  torch::Tensor warmup;             // [warmup rows, columns] float64 (0 rows unless saved)
  std::optional<double> step_size;  // from "# Step size = ..." when present
};

StanCsv read_stan_csv(const std::string& path);

// Several chains of the same model, one file each.
struct StanChains {
  std::vector<std::string> paths;
  std::vector<std::string> names;  // columns, identical in every file
  torch::Tensor draws;             // [chains, draws, columns] float64
};

// Reads every file; all must have the same columns (same names, same order) and the same number of
// draws, else FileError naming the offending file and the first file.
StanChains read_stan_csv_chains(const std::vector<std::string>& paths);

// True for Stan's sampler columns (names ending in "__": lp__, energy__, divergent__, ...).
bool is_sampler_column(const std::string& name);

}  // namespace dslens::samplers
