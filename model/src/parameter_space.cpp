#include "dslens/model/parameter_space.h"

#include <limits>

#include "dslens/core/device.h"
#include "dslens/core/errors.h"

namespace dslens::model {

void ParameterSpace::check_new(const std::string& name) const {
  if (has(name)) throw InvalidArgument("parameter '" + name + "' is declared twice");
}

void ParameterSpace::add_fixed(const std::string& name, double value) {
  check_new(name);
  entries_.push_back({name, Entry::Kind::kFixed, value, std::nullopt, 0, 0});
  regroup();
}

void ParameterSpace::add_free(const std::string& name, const Prior& prior,
                              std::optional<double> init) {
  check_new(name);
  const double start = init.value_or(prior.median());
  if (!(start > prior.lower() && start < prior.upper()) && prior.kind() != Prior::Kind::kNormal) {
    throw InvalidArgument("parameter '" + name + "': init " + std::to_string(start) +
                          " lies outside its prior's support");
  }
  entries_.push_back({name, Entry::Kind::kFree, start, prior, dim_, 1});
  dim_ += 1;
  regroup();
}

void ParameterSpace::add_standard_normal_block(const std::string& name, int64_t size) {
  check_new(name);
  if (size <= 0) throw InvalidArgument("parameter block '" + name + "' needs a positive size");
  entries_.push_back({name, Entry::Kind::kBlock, 0.0, Prior::normal(0, 1), dim_, size});
  dim_ += size;
  regroup();
}

void ParameterSpace::regroup() {
  groups_.clear();
  fixed_entries_.clear();
  for (const auto kind : {Prior::Kind::kUniform, Prior::Kind::kNormal, Prior::Kind::kLogNormal,
                          Prior::Kind::kTruncatedNormal}) {
    std::vector<Prior> priors;
    std::vector<size_t> members;
    std::vector<int64_t> columns;
    for (size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      if (e.kind != Entry::Kind::kFree || e.prior->kind() != kind) continue;
      priors.push_back(*e.prior);
      members.push_back(i);
      columns.push_back(e.offset);
    }
    if (!priors.empty()) groups_.push_back({PriorGroup(priors), members, columns});
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (entries_[i].kind == Entry::Kind::kFixed) fixed_entries_.push_back(i);
  }
  // Copies made before this call keep their own cache; this space starts a new one.
  mutex_ = std::make_shared<std::mutex>();
  cache_ = std::make_shared<std::map<std::string, DeviceConstants>>();
}

const ParameterSpace::DeviceConstants& ParameterSpace::device_constants(
    const torch::TensorOptions& options) const {
  const std::string key = device_dtype_key(options);
  std::lock_guard<std::mutex> lock(*mutex_);
  auto it = cache_->find(key);
  if (it != cache_->end()) return it->second;
  DeviceConstants c;
  for (const auto& g : groups_) {
    c.columns.push_back(torch::tensor(g.columns, torch::kLong).to(options.device()));
  }
  std::vector<double> fixed;
  for (const size_t i : fixed_entries_) fixed.push_back(entries_[i].value);
  c.fixed = torch::tensor(fixed, torch::kFloat64).to(options);
  return (*cache_)[key] = std::move(c);
}

bool ParameterSpace::has(const std::string& name) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](auto& e) { return e.name == name; });
}

const ParameterSpace::Entry& ParameterSpace::find(const std::string& name) const {
  for (const auto& e : entries_) {
    if (e.name == name) return e;
  }
  throw InvalidArgument("unknown parameter '" + name + "'");
}

bool ParameterSpace::is_fixed(const std::string& name) const {
  return find(name).kind == Entry::Kind::kFixed;
}

std::pair<double, double> ParameterSpace::range(const std::string& name) const {
  const Entry& e = find(name);
  constexpr double inf = std::numeric_limits<double>::infinity();
  switch (e.kind) {
    case Entry::Kind::kFixed:
      return {e.value, e.value};
    case Entry::Kind::kFree:
      return {e.prior->lower(), e.prior->upper()};
    case Entry::Kind::kBlock:
      break;
  }
  return {-inf, inf};
}

std::vector<std::string> ParameterSpace::coordinate_names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) {
    if (e.kind == Entry::Kind::kFree) out.push_back(e.name);
    if (e.kind == Entry::Kind::kBlock) {
      for (int64_t i = 0; i < e.size; ++i) out.push_back(e.name + "[" + std::to_string(i) + "]");
    }
  }
  return out;
}

std::vector<std::string> ParameterSpace::free_names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) {
    if (e.kind != Entry::Kind::kFixed) out.push_back(e.name);
  }
  return out;
}

ParameterSpace::Unpacked ParameterSpace::unpack(const torch::Tensor& u) const {
  if (u.dim() != 2 || u.size(1) != dim_) {
    throw InvalidArgument("parameter vector must be [chains, " + std::to_string(dim_) + "], got " +
                          std::to_string(u.dim()) + "-d");
  }
  const int64_t chains = u.size(0);
  const DeviceConstants& c = device_constants(u.options());
  Unpacked out;
  out.log_prior = torch::zeros({chains}, u.options());
  for (size_t j = 0; j < fixed_entries_.size(); ++j) {
    out.values[entries_[fixed_entries_[j]].name] = c.fixed.select(0, j).expand({chains});
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    const auto r = groups_[g].priors.forward(u.index_select(1, c.columns[g]));
    out.log_prior = out.log_prior + r.log_density;
    // unbind, not one select per column: its backward stacks the columns' gradients in one
    // operator, where each select's backward zero-fills a [C, n] gradient and copies into it (five
    // operators per parameter and call, a tenth of the CPU sampler's backward pass).
    const auto columns = r.x.unbind(1);
    for (size_t j = 0; j < groups_[g].entries.size(); ++j) {
      out.values[entries_[groups_[g].entries[j]].name] = columns[j];
    }
  }
  for (const auto& e : entries_) {
    if (e.kind != Entry::Kind::kBlock) continue;
    const auto z = u.narrow(1, e.offset, e.size);
    out.values[e.name] = z;
    // Standard normal: -z^2/2 - log sqrt(2 pi) per coordinate.
    out.log_prior = out.log_prior - 0.5 * (z * z).sum(1) - e.size * 0.91893853320467274178;
  }
  return out;
}

torch::Tensor ParameterSpace::pack(const std::map<std::string, torch::Tensor>& values) const {
  std::vector<torch::Tensor> columns;
  for (const auto& e : entries_) {
    if (e.kind == Entry::Kind::kFixed) continue;
    auto it = values.find(e.name);
    if (it == values.end()) throw InvalidArgument("pack: no value for parameter '" + e.name + "'");
    if (e.kind == Entry::Kind::kFree) {
      columns.push_back(e.prior->bijection().inverse(it->second.reshape({-1, 1})));
    } else {
      columns.push_back(it->second.reshape({-1, e.size}));
    }
  }
  if (columns.empty()) throw InvalidArgument("pack: the model has no free parameters");
  return torch::cat(columns, 1);
}

torch::Tensor ParameterSpace::constrained(const torch::Tensor& u) const {
  const Unpacked un = unpack(u);
  std::vector<torch::Tensor> columns;
  for (const auto& e : entries_) {
    if (e.kind == Entry::Kind::kFree) columns.push_back(un.values.at(e.name).reshape({-1, 1}));
    if (e.kind == Entry::Kind::kBlock) columns.push_back(un.values.at(e.name));
  }
  return torch::cat(columns, 1);
}

std::optional<Prior> ParameterSpace::prior(const std::string& name) const {
  const Entry& e = find(name);
  return e.kind == Entry::Kind::kFree ? e.prior : std::nullopt;
}

torch::Tensor ParameterSpace::sample_prior(int64_t chains, const torch::TensorOptions& options,
                                           torch::Generator& gen) const {
  std::map<std::string, torch::Tensor> values;
  for (const auto& e : entries_) {
    if (e.kind == Entry::Kind::kFree) values[e.name] = e.prior->sample({chains}, options, gen);
    if (e.kind == Entry::Kind::kBlock) {
      values[e.name] = torch::randn({chains, e.size}, gen, torch::kFloat64).to(options);
    }
  }
  return pack(values);
}

torch::Tensor ParameterSpace::initial(int64_t chains, const torch::TensorOptions& options) const {
  std::map<std::string, torch::Tensor> values;
  for (const auto& e : entries_) {
    if (e.kind == Entry::Kind::kFree) values[e.name] = torch::full({chains}, e.value, options);
    if (e.kind == Entry::Kind::kBlock) values[e.name] = torch::zeros({chains, e.size}, options);
  }
  return pack(values);
}

nlohmann::json ParameterSpace::describe() const {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : entries_) {
    nlohmann::json j{{"name", e.name}};
    if (e.kind == Entry::Kind::kFixed) j["fixed"] = e.value;
    if (e.kind == Entry::Kind::kFree) {
      j["prior"] = e.prior->to_json();
      j["init"] = e.value;
      j["transform"] = e.prior->bijection().describe();
    }
    if (e.kind == Entry::Kind::kBlock) {
      j["prior"] = {{"prior", "standard_normal"}, {"size", e.size}};
    }
    out.push_back(j);
  }
  return out;
}

}  // namespace dslens::model
