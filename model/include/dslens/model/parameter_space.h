// The parameters of a lens model as the samplers see them: a flat unconstrained vector per chain.
//
// Every named parameter is fixed, free with a scalar prior (mapped through its support's
// bijection), or a block of standard-normal latents (a VAE's z, identity bijection). unpack()
// maps u [C, D] to constrained values name -> [C] (blocks: [C, k]) and the log prior density of u,
// which includes the log-Jacobians: log p(u) = sum_i log p_i(T_i(u_i)) + log |T_i'(u_i)|.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dslens/core/priors.h"

namespace dslens::model {

class ParameterSpace {
 public:
  struct Unpacked {
    std::map<std::string, torch::Tensor> values;  // [C] for scalars, [C, k] for blocks
    torch::Tensor log_prior;                      // [C], in the unconstrained space
  };

  void add_fixed(const std::string& name, double value);
  void add_free(const std::string& name, const Prior& prior, std::optional<double> init = {});
  // k latents with independent N(0, 1) priors; init 0.
  void add_standard_normal_block(const std::string& name, int64_t size);

  int64_t dim() const { return dim_; }
  // Names of the unconstrained coordinates in order ("theta_E", "z[0]", ...).
  std::vector<std::string> coordinate_names() const;
  std::vector<std::string> free_names() const;  // free scalars and blocks, in order
  bool has(const std::string& name) const;
  bool is_fixed(const std::string& name) const;
  // The values a scalar parameter can take: [v, v] when fixed, its prior's support when free
  // (bounds may be infinite); (-inf, inf) for a block's coordinates.
  std::pair<double, double> range(const std::string& name) const;

  Unpacked unpack(const torch::Tensor& u) const;
  // Constrained values of every coordinate [C, D], in coordinate_names() order.
  torch::Tensor constrained(const torch::Tensor& u) const;
  // The prior of a free scalar parameter; nullopt for fixed parameters and blocks.
  std::optional<Prior> prior(const std::string& name) const;
  // Constrained values (every free name present, [C] or [C, k]) -> u [C, D].
  torch::Tensor pack(const std::map<std::string, torch::Tensor>& values) const;
  // u [C, D] drawn from the prior (CPU generator; moved to `options`).
  torch::Tensor sample_prior(int64_t chains, const torch::TensorOptions& options,
                             torch::Generator& gen) const;
  // u [C, D] at each parameter's "init" (or prior median), the same for every chain.
  torch::Tensor initial(int64_t chains, const torch::TensorOptions& options) const;
  nlohmann::json describe() const;

 private:
  struct Entry {
    std::string name;
    enum class Kind { kFixed, kFree, kBlock } kind;
    double value = 0.0;  // fixed value or init
    std::optional<Prior> prior;
    int64_t offset = 0, size = 1;
  };
  const Entry& find(const std::string& name) const;
  void check_new(const std::string& name) const;
  std::vector<Entry> entries_;
  int64_t dim_ = 0;

  // unpack() evaluates the free scalars by prior kind, all columns of a kind in one PriorGroup
  // (one tensor op per step for all of them: on a GPU a kernel per step, not per parameter), and
  // takes the fixed values from one cached tensor. Rebuilt by every add_*.
  struct Group {
    PriorGroup priors;
    std::vector<size_t> entries;   // indices into entries_
    std::vector<int64_t> columns;  // their offsets in u
  };
  void regroup();
  // Per device and dtype: each group's column indices (int64) and the fixed values [n_fixed].
  struct DeviceConstants {
    std::vector<torch::Tensor> columns;
    torch::Tensor fixed;
  };
  const DeviceConstants& device_constants(const torch::TensorOptions& options) const;
  std::vector<Group> groups_;
  std::vector<size_t> fixed_entries_;
  std::shared_ptr<std::mutex> mutex_ = std::make_shared<std::mutex>();
  std::shared_ptr<std::map<std::string, DeviceConstants>> cache_;
};

}  // namespace dslens::model
