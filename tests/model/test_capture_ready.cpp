// What a CUDA graph of the posterior needs (samplers/cuda_graph.h): the log density and its
// gradient read nothing back from the device once the EPL's series length is fixed, and the fixed
// length comes from the largest |e| the priors allow (LensPosterior::epl_ellipticity_bound).
// Checked on the CPU through the tensor-op paths that CUDA tensors take (cpu_kernels off).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "app/op_census.h"
#include "dslens/core/config.h"
#include "dslens/model/fit_model.h"
#include "dslens/physics/profile.h"
#include "tiny_vae.h"

using namespace dslens;

namespace {

nlohmann::json uniform(double lower, double upper) {
  return {{"prior", "uniform"}, {"lower", lower}, {"upper", upper}};
}

// EPL + shear + a VAE source, the demo's model on a small grid.
nlohmann::json epl_vae_model(const std::string& vae_dir, const nlohmann::json& e1,
                             const nlohmann::json& e2) {
  return {{"mass",
           {{{"type", "EPL"},
             {"theta_E", uniform(0.6, 1.4)},
             {"gamma", uniform(1.6, 2.5)},
             {"e1", e1},
             {"e2", e2},
             {"center_x", {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.05}}},
             {"center_y", 0.0}},
            {{"type", "SHEAR"}, {"gamma1", uniform(-0.1, 0.1)}, {"gamma2", uniform(-0.1, 0.1)}}}},
          {"source",
           {{{"type", "VAE"},
             {"checkpoint", vae_dir},
             {"center_x", uniform(-0.2, 0.2)},
             {"center_y", uniform(-0.2, 0.2)},
             {"scale", 0.04},
             {"amp", {{"prior", "lognormal"}, {"mu", 0.0}, {"sigma", 1.0}}}}}}};
}

model::LensPosterior posterior_of(const model::FitModel& fit, const Compute& compute) {
  const auto grid = physics::PixelGrid::centered(20, 20, 0.1);
  auto psf = torch::exp(-(torch::arange(-2, 3, torch::kFloat64).pow(2).view({-1, 1}) +
                          torch::arange(-2, 3, torch::kFloat64).pow(2).view({1, -1})));
  psf = psf / psf.sum();
  auto gen = at::detail::createCPUGenerator(4);
  model::ImagingData data{torch::randn({20, 20}, gen, torch::kFloat64),
                          torch::full({20, 20}, 0.5, torch::kFloat64),
                          torch::ones({20, 20}, torch::kBool)};
  return model::LensPosterior(fit.spec(grid, psf), fit.space, data, compute);
}

struct TensorOpPaths {
  TensorOpPaths() { physics::set_cpu_kernels(false); }
  ~TensorOpPaths() {
    physics::set_cpu_kernels(true);
    physics::set_epl_series_terms(0);
  }
};

}  // namespace

TEST(CaptureReady, PosteriorReadsNothingBackWithAFixedEplSeries) {
  const TensorOpPaths paths;
  const Compute compute{torch::kCPU, torch::kFloat32};
  const auto vae = dslens::testing::tiny_vae_checkpoint("capture_ready", 5);
  const auto fit = model::parse_fit_model(
      ConfigNode(epl_vae_model(vae, uniform(-0.3, 0.3), uniform(-0.2, 0.4)), "/model"), vae,
      compute);
  const auto posterior = posterior_of(fit, compute);
  const auto bound = posterior.epl_ellipticity_bound();
  ASSERT_TRUE(bound.has_value());
  EXPECT_DOUBLE_EQ(*bound, std::hypot(0.3, 0.4));

  auto gen = at::detail::createCPUGenerator(8);
  const auto u = fit.space.sample_prior(3, compute.options(), gen);
  const auto log_density = posterior.log_density();
  auto reads_of_one_call = [&](samplers::LogDensityValue& v) {
    app::OpCensus census;
    v = log_density(u);
    return census.count("aten::_local_scalar_dense") + census.count("aten::nonzero") +
           census.count("aten::item");
  };
  samplers::LogDensityValue per_batch, fixed;
  EXPECT_GE(reads_of_one_call(per_batch), 1);  // the EPL's series length, chosen per batch
  physics::set_epl_series_terms(physics::epl_series_terms_for(*bound, compute.dtype));
  EXPECT_EQ(reads_of_one_call(fixed), 0);
  {  // the MAP's smoothed objective too
    app::OpCensus census;
    (void)posterior.log_density_smoothed(1.5)(u);
    EXPECT_EQ(census.count("aten::_local_scalar_dense"), 0);
  }
  // The longer fixed series changes nothing at float32's precision.
  EXPECT_TRUE(torch::allclose(fixed.log_p, per_batch.log_p, 1e-5, 1e-3));
  EXPECT_TRUE(torch::allclose(fixed.grad, per_batch.grad, 1e-3,
                              1e-3 * per_batch.grad.abs().max().item<double>()));
}

TEST(CaptureReady, EplEllipticityBoundFollowsThePriors) {
  const Compute compute{torch::kCPU, torch::kFloat64};
  const auto vae = dslens::testing::tiny_vae_checkpoint("capture_bound", 5);
  auto bound_of = [&](const nlohmann::json& model) {
    const auto fit = model::parse_fit_model(ConfigNode(model, "/model"), vae, compute);
    return posterior_of(fit, compute).epl_ellipticity_bound();
  };
  // Fixed e2 counts with its value.
  EXPECT_DOUBLE_EQ(*bound_of(epl_vae_model(vae, uniform(-0.1, 0.25), -0.2)), std::hypot(0.25, 0.2));
  // q / phi: |e| = (1 - q) / (1 + q) at q's lower bound.
  auto with_q = epl_vae_model(vae, 0.0, 0.0);
  auto& epl = with_q["mass"][0];
  epl.erase("e1");
  epl.erase("e2");
  epl["q"] = uniform(0.5, 1.0);
  epl["phi"] = uniform(-1.6, 1.6);
  EXPECT_DOUBLE_EQ(*bound_of(with_q), 1.0 / 3.0);
  // A normal prior leaves |e| unbounded.
  EXPECT_FALSE(
      bound_of(epl_vae_model(vae, {{"prior", "normal"}, {"mean", 0.0}, {"sigma", 0.1}}, 0.0))
          .has_value());
  // Without an EPL there is no series.
  auto sis = epl_vae_model(vae, 0.0, 0.0);
  sis["mass"] = {{{"type", "SIS"}, {"theta_E", 1.0}, {"center_x", 0.0}, {"center_y", 0.0}}};
  EXPECT_EQ(*bound_of(sis), 0.0);
  std::filesystem::remove_all(vae);
}
