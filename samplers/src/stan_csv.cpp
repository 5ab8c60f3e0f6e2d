#include "dslens/samplers/stan_csv.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "dslens/core/errors.h"

namespace dslens::samplers {
namespace stan_csv_detail {

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    out.push_back(
        trim(line.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

[[noreturn]] void fail(const std::string& path, size_t line, const std::string& what) {
  throw FileError("Stan CSV '" + path + "'" + (line ? ", line " + std::to_string(line) : "") +
                  ": " + what);
}

bool parse_double(const std::string& field, double& out) {
  if (field.empty()) return false;
  const char* begin = field.c_str();
  char* end = nullptr;
  errno = 0;
  out = std::strtod(begin, &end);
  // Out-of-range values saturate to +-inf or underflow to 0/denormals, as in Stan's own reader.
  return end == begin + field.size();
}

torch::Tensor to_tensor(const std::vector<double>& values, int64_t columns) {
  const auto rows = columns ? static_cast<int64_t>(values.size()) / columns : 0;
  auto t = torch::empty({rows, columns}, torch::kFloat64);
  std::copy(values.begin(), values.end(), t.data_ptr<double>());
  return t;
}

}  // namespace stan_csv_detail

bool is_sampler_column(const std::string& name) {
  return name.size() > 2 && name.compare(name.size() - 2, 2, "__") == 0;
}

StanCsv read_stan_csv(const std::string& path) {
  namespace sd = stan_csv_detail;
  if (!std::filesystem::exists(path)) throw FileError("Stan CSV '" + path + "' does not exist");
  if (std::filesystem::is_directory(path)) throw FileError("Stan CSV '" + path + "' is a folder");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError("Stan CSV '" + path + "' cannot be opened");
  StanCsv out;
  out.path = path;
  std::vector<double> rows;    // row-major values of all data rows so far
  std::vector<double> warmup;  // rows before "Adaptation terminated"
  bool have_header = false;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string t = sd::trim(line);
    if (t.empty()) continue;
    if (t[0] == '#') {
      const std::string c = sd::trim(t.substr(1));
      if (c.rfind("Adaptation terminated", 0) == 0 && !rows.empty()) {
        // Rows so far were warmup draws (save_warmup = true).
        warmup.insert(warmup.end(), rows.begin(), rows.end());
        rows.clear();
      } else if (c.rfind("Step size", 0) == 0) {
        const auto eq = c.find('=');
        double v = 0;
        if (eq != std::string::npos && sd::parse_double(sd::trim(c.substr(eq + 1)), v))
          out.step_size = v;
      }
      continue;
    }
    const auto fields = sd::split_fields(t);
    if (!have_header) {
      std::set<std::string> seen;
      for (size_t i = 0; i < fields.size(); ++i) {
        if (fields[i].empty())
          sd::fail(path, lineno,
                   "header has an empty column name (column " + std::to_string(i + 1) + ")");
        if (!seen.insert(fields[i]).second)
          sd::fail(path, lineno, "header repeats column '" + fields[i] + "'");
        double ignored = 0;
        if (sd::parse_double(fields[i], ignored) && i == 0) {
          sd::fail(path, lineno, "expected a header row of column names, found numbers");
        }
      }
      out.names = fields;
      have_header = true;
      continue;
    }
    if (fields.size() != out.names.size()) {
      sd::fail(path, lineno,
               "expected " + std::to_string(out.names.size()) + " values, found " +
                   std::to_string(fields.size()));
    }
    for (size_t i = 0; i < fields.size(); ++i) {
      double v = 0;
      if (!sd::parse_double(fields[i], v)) {
        sd::fail(path, lineno,
                 "column '" + out.names[i] + "': '" + fields[i] + "' is not a number");
      }
      rows.push_back(v);
    }
  }
  if (in.bad()) throw FileError("Stan CSV '" + path + "': read error");
  if (!have_header) sd::fail(path, 0, "no header row (is this a Stan CSV file?)");
  if (rows.empty()) sd::fail(path, 0, "no draws after the header");
  const auto cols = static_cast<int64_t>(out.names.size());
  out.draws = sd::to_tensor(rows, cols);
  out.warmup = sd::to_tensor(warmup, cols);
  return out;
}

StanChains read_stan_csv_chains(const std::vector<std::string>& paths) {
  if (paths.empty()) throw InvalidArgument("read_stan_csv_chains: no files given");
  StanChains out;
  out.paths = paths;
  std::vector<torch::Tensor> chains;
  for (size_t i = 0; i < paths.size(); ++i) {
    auto csv = read_stan_csv(paths[i]);
    if (i == 0) {
      out.names = csv.names;
    } else {
      if (csv.names != out.names) {
        throw FileError("Stan CSV '" + paths[i] + "': its " + std::to_string(csv.names.size()) +
                        " columns differ from the " + std::to_string(out.names.size()) +
                        " columns of '" + paths[0] + "' (chains must come from the same model)");
      }
      if (csv.draws.size(0) != chains.front().size(0)) {
        throw FileError("Stan CSV '" + paths[i] + "' has " + std::to_string(csv.draws.size(0)) +
                        " draws but '" + paths[0] + "' has " +
                        std::to_string(chains.front().size(0)) +
                        " (chains must have equal length)");
      }
    }
    chains.push_back(csv.draws);
  }
  out.draws = torch::stack(chains);
  return out;
}

}  // namespace dslens::samplers
