// Mass profiles against lenstronomy's reference, float32 vs float64, batching, gradients vs
// finite differences, registry errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dslens/core/errors.h"
#include "dslens/physics/lens_model.h"
#include "dslens/physics/mass_profiles.h"
#include "dslens/physics/profile.h"
#include "test_support.h"

namespace dslens::physics::test_mass_profiles_detail {

using nlohmann::json;

json load_reference() {
  std::ifstream in(testing::lenstronomy_reference_path());
  return json::parse(in);
}

Tensor row(const json& values, torch::Dtype dtype = torch::kFloat64) {
  std::vector<double> v = values.get<std::vector<double>>();
  return torch::tensor(v, torch::kFloat64).reshape({1, -1}).to(dtype);
}

ParamMap params_of(const json& kwargs, torch::Dtype dtype = torch::kFloat64) {
  ParamMap p;
  for (auto it = kwargs.begin(); it != kwargs.end(); ++it)
    p[it.key()] = torch::full({1}, it.value().get<double>(), torch::TensorOptions().dtype(dtype));
  return p;
}

// max |a - b| / (rel |b| + abs): <= 1 passes.
double scaled_error(const Tensor& a, const Tensor& b, double rel, double abs) {
  auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
  return ((a64 - b64).abs() / (rel * b64.abs() + abs)).max().item<double>();
}

double max_rel_error(const Tensor& a, const Tensor& b, double abs_floor) {
  auto a64 = a.detach().to(torch::kFloat64), b64 = b.detach().to(torch::kFloat64);
  return ((a64 - b64).abs() / (b64.abs() + abs_floor)).max().item<double>();
}

struct Outputs {
  Tensor ax, ay, psi, fxx, fxy, fyy, kappa;
};

Outputs evaluate(const MassProfile& prof, const Tensor& x, const Tensor& y, const ParamMap& p) {
  auto a = prof.deflection(x, y, p);
  auto h = prof.hessian(x, y, p);
  return {a.x, a.y, prof.potential(x, y, p), h.xx, h.xy, h.yy, prof.convergence(x, y, p)};
}

TEST(MassProfiles, ReproduceLenstronomyReference) {
  DSLENS_REQUIRE_FILE(testing::lenstronomy_reference_path());
  json ref = load_reference();
  std::map<std::string, std::vector<double>>
      worst;  // profile -> max rel err (alpha, psi, H, kappa)
  for (const auto& e : ref["lens"]) {
    const std::string type = e["profile"];
    SCOPED_TRACE(type + " " + e["kwargs"].dump());
    auto prof = make_mass_profile(type);
    auto x = row(e["x"]), y = row(e["y"]);
    auto out = evaluate(*prof, x, y, params_of(e["kwargs"]));
    const double h_rel = type == "SIE" ? 1e-4 : 1e-6;
    const double h_abs = type == "SIE" ? 1e-5 : 1e-8;
    EXPECT_LE(scaled_error(out.ax, row(e["alpha_x"]), 1e-8, 1e-10), 1.0);
    EXPECT_LE(scaled_error(out.ay, row(e["alpha_y"]), 1e-8, 1e-10), 1.0);
    EXPECT_LE(scaled_error(out.psi, row(e["potential"]), 1e-8, 1e-10), 1.0);
    EXPECT_LE(scaled_error(out.fxx, row(e["f_xx"]), h_rel, h_abs), 1.0);
    EXPECT_LE(scaled_error(out.fxy, row(e["f_xy"]), h_rel, h_abs), 1.0);
    EXPECT_LE(scaled_error(out.fyy, row(e["f_yy"]), h_rel, h_abs), 1.0);
    EXPECT_LE(scaled_error(out.kappa, row(e["kappa"]), h_rel, h_abs), 1.0);
    auto& w = worst[type];
    w.resize(4, 0.0);
    w[0] = std::max({w[0], max_rel_error(out.ax, row(e["alpha_x"]), 1e-10),
                     max_rel_error(out.ay, row(e["alpha_y"]), 1e-10)});
    w[1] = std::max(w[1], max_rel_error(out.psi, row(e["potential"]), 1e-10));
    w[2] = std::max({w[2], max_rel_error(out.fxx, row(e["f_xx"]), 1e-8),
                     max_rel_error(out.fxy, row(e["f_xy"]), 1e-8),
                     max_rel_error(out.fyy, row(e["f_yy"]), 1e-8)});
    w[3] = std::max(w[3], max_rel_error(out.kappa, row(e["kappa"]), 1e-8));
  }
  for (const auto& [type, w] : worst)
    std::cout << "[reference] " << type << ": max rel err alpha " << w[0] << ", potential " << w[1]
              << ", hessian " << w[2] << ", kappa " << w[3] << "\n";
  EXPECT_EQ(worst.size(), 8u);
}

TEST(MassProfiles, Float32MatchesFloat64) {
  DSLENS_REQUIRE_FILE(testing::lenstronomy_reference_path());
  json ref = load_reference();
  for (const auto& e : ref["lens"]) {
    const std::string type = e["profile"];
    SCOPED_TRACE(type + " " + e["kwargs"].dump());
    auto prof = make_mass_profile(type);
    auto o64 = evaluate(*prof, row(e["x"]), row(e["y"]), params_of(e["kwargs"]));
    auto o32 = evaluate(*prof, row(e["x"], torch::kFloat32), row(e["y"], torch::kFloat32),
                        params_of(e["kwargs"], torch::kFloat32));
    EXPECT_EQ(o32.ax.scalar_type(), torch::kFloat32);
    auto pairs = std::vector<std::pair<Tensor, Tensor>>{
        {o32.ax, o64.ax},   {o32.ay, o64.ay},   {o32.psi, o64.psi},    {o32.fxx, o64.fxx},
        {o32.fxy, o64.fxy}, {o32.fyy, o64.fyy}, {o32.kappa, o64.kappa}};
    for (const auto& [a, b] : pairs) {
      const double scale = std::max(b.abs().max().item<double>(), 1e-6);
      EXPECT_LE((a.to(torch::kFloat64) - b).abs().max().item<double>() / scale, 1e-4);
    }
  }
}

// Several parameter sets in one [B] call equal one-at-a-time calls, for x of shape [B, N] and [1,
// N].
TEST(MassProfiles, BatchedEqualsSingle) {
  DSLENS_REQUIRE_FILE(testing::lenstronomy_reference_path());
  json ref = load_reference();
  std::map<std::string, std::vector<json>> by_type;
  for (const auto& e : ref["lens"]) by_type[e["profile"]].push_back(e);
  for (const auto& [type, entries] : by_type) {
    SCOPED_TRACE(type);
    auto prof = make_mass_profile(type);
    ParamMap batched;
    std::vector<Tensor> xs, ys;
    for (const auto& e : entries) {
      for (auto it = e["kwargs"].begin(); it != e["kwargs"].end(); ++it) {
        auto v = torch::full({1}, it.value().get<double>(), torch::kFloat64);
        batched[it.key()] = batched.count(it.key()) ? torch::cat({batched[it.key()], v}) : v;
      }
      xs.push_back(row(e["x"]));
      ys.push_back(row(e["y"]));
    }
    auto X = torch::cat(xs), Y = torch::cat(ys);
    auto ob = evaluate(*prof, X, Y, batched);
    auto oshared = evaluate(*prof, xs[0], ys[0], batched);  // [1, N] coordinates, B parameter sets
    for (size_t i = 0; i < entries.size(); ++i) {
      auto o1 = evaluate(*prof, xs[i], ys[i], params_of(entries[i]["kwargs"]));
      auto o0 = evaluate(*prof, xs[0], ys[0], params_of(entries[i]["kwargs"]));
      const auto b = static_cast<int64_t>(i);
      for (auto [m, s] : std::vector<std::pair<Tensor, Tensor>>{{ob.ax, o1.ax},
                                                                {ob.ay, o1.ay},
                                                                {ob.psi, o1.psi},
                                                                {ob.fxx, o1.fxx},
                                                                {ob.fxy, o1.fxy},
                                                                {ob.kappa, o1.kappa}})
        EXPECT_LE(scaled_error(m.select(0, b), s.select(0, 0), 1e-12, 1e-14), 1.0);
      for (auto [m, s] : std::vector<std::pair<Tensor, Tensor>>{
               {oshared.ax, o0.ax}, {oshared.ay, o0.ay}, {oshared.fyy, o0.fyy}})
        EXPECT_LE(scaled_error(m.select(0, b), s.select(0, 0), 1e-12, 1e-14), 1.0);
    }
  }
}

// d/dp sum(w_x alpha_x + w_y alpha_y) by autograd vs a central finite difference, every parameter
// and the coordinates, float64.
void check_gradients(const MassProfile& prof, const ParamMap& base, const Tensor& x,
                     const Tensor& y, double tol) {
  auto wx = torch::linspace(-1.0, 1.0, x.size(1), torch::kFloat64).reshape({1, -1});
  auto wy = torch::cos(torch::linspace(0.0, 5.0, x.size(1), torch::kFloat64)).reshape({1, -1});
  auto objective = [&](const ParamMap& p, const Tensor& xx, const Tensor& yy) {
    auto a = prof.deflection(xx, yy, p);
    return (wx * a.x + wy * a.y).sum();
  };
  for (const auto& [name, value] : base) {
    if (name == "m") continue;  // integer multipole order
    SCOPED_TRACE(prof.type() + " d/d" + name);
    ParamMap p = base;
    p[name] = value.clone().requires_grad_(true);
    auto g = torch::autograd::grad({objective(p, x, y)}, {p[name]})[0].item<double>();
    const double h = 1e-6 * std::max(1.0, std::abs(value.item<double>()));
    ParamMap pp = base, pm = base;
    pp[name] = value + h;
    pm[name] = value - h;
    const double fd =
        (objective(pp, x, y).item<double>() - objective(pm, x, y).item<double>()) / (2 * h);
    EXPECT_NEAR(g, fd, tol * std::max(1.0, std::abs(fd)));
  }
  // coordinates: one point
  auto xg = x.clone().requires_grad_(true), yg = y.clone().requires_grad_(true);
  auto grads = torch::autograd::grad({objective(base, xg, yg)}, {xg, yg});
  const int64_t k = 3;
  const double h = 1e-6;
  auto xp = x.clone(), xm = x.clone();
  xp.index_put_({0, k}, x.index({0, k}) + h);
  xm.index_put_({0, k}, x.index({0, k}) - h);
  const double fdx =
      (objective(base, xp, y).item<double>() - objective(base, xm, y).item<double>()) / (2 * h);
  EXPECT_NEAR(grads[0].index({0, k}).item<double>(), fdx, tol * std::max(1.0, std::abs(fdx)));
  auto yp = y.clone(), ym = y.clone();
  yp.index_put_({0, k}, y.index({0, k}) + h);
  ym.index_put_({0, k}, y.index({0, k}) - h);
  const double fdy =
      (objective(base, x, yp).item<double>() - objective(base, x, ym).item<double>()) / (2 * h);
  EXPECT_NEAR(grads[1].index({0, k}).item<double>(), fdy, tol * std::max(1.0, std::abs(fdy)));
}

TEST(MassProfiles, GradientsMatchFiniteDifferences) {
  DSLENS_REQUIRE_FILE(testing::lenstronomy_reference_path());
  json ref = load_reference();
  std::map<std::string, int> seen;
  for (const auto& e : ref["lens"]) {
    const std::string type = e["profile"];
    if (seen[type]++ >= 2) continue;
    SCOPED_TRACE(e["kwargs"].dump());
    check_gradients(*make_mass_profile(type), params_of(e["kwargs"]), row(e["x"]), row(e["y"]),
                    1e-6);
  }
  // tensor-op EPL as well (the CUDA path)
  const auto& e = ref["lens"][16];
  ASSERT_EQ(e["profile"], "EPL");
  check_gradients(EPLProfile(false), params_of(e["kwargs"]), row(e["x"]), row(e["y"]), 1e-6);
}

TEST(MassProfiles, DefaultAutogradHessianMatchesAnalytic) {
  DSLENS_REQUIRE_FILE(testing::lenstronomy_reference_path());
  json ref = load_reference();
  std::map<std::string, int> seen;
  for (const auto& e : ref["lens"]) {
    const std::string type = e["profile"];
    if (seen[type]++ >= 1) continue;
    SCOPED_TRACE(type);
    auto prof = make_mass_profile(type);
    auto x = row(e["x"]), y = row(e["y"]);
    auto p = params_of(e["kwargs"]);
    auto h = prof->hessian(x, y, p);
    auto d = prof->MassProfile::hessian(x, y, p);
    EXPECT_LE(scaled_error(d.xx, h.xx, 1e-9, 1e-11), 1.0);
    EXPECT_LE(scaled_error(d.xy, h.xy, 1e-9, 1e-11), 1.0);
    EXPECT_LE(scaled_error(d.yy, h.yy, 1e-9, 1e-11), 1.0);
    auto k = prof->MassProfile::convergence(x, y, p);
    EXPECT_LE(scaled_error(k, prof->convergence(x, y, p), 1e-9, 1e-11), 1.0);
  }
}

TEST(MassProfiles, RegistryErrors) {
  EXPECT_EQ(mass_profile_types().size(), 8u);
  try {
    make_mass_profile("SPEMD");
    FAIL() << "no exception";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("SPEMD"), std::string::npos);
    EXPECT_NE(std::string(err.what()).find("EPL"), std::string::npos);
    EXPECT_NE(std::string(err.what()).find("NFW"), std::string::npos);
  }
  auto x = torch::linspace(-1, 1, 5, torch::kFloat64).reshape({1, -1});
  ParamMap p{{"theta_E", torch::ones({1}, torch::kFloat64)},
             {"center_x", torch::zeros({1}, torch::kFloat64)}};
  try {
    make_mass_profile("SIS")->deflection(x, x, p);
    FAIL() << "no exception";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("SIS"), std::string::npos);
    EXPECT_NE(std::string(err.what()).find("center_y"), std::string::npos);
  }
  // optional parameters take lenstronomy's defaults
  ParamMap s{{"gamma1", torch::full({1}, 0.05, torch::kFloat64)},
             {"gamma2", torch::full({1}, -0.02, torch::kFloat64)}};
  auto a = make_mass_profile("SHEAR")->deflection(x, x, s);
  EXPECT_TRUE(torch::allclose(a.x, 0.05 * x - 0.02 * x));
  EXPECT_EQ(mass_profile_defaults("MULTIPOLE").at("r_E"), 1.0);
}

TEST(LensModel, SumsRayShootAndMagnification) {
  auto x = torch::linspace(-2.0, 2.0, 40, torch::kFloat64).reshape({1, -1});
  auto y = torch::linspace(-1.5, 1.7, 40, torch::kFloat64).reshape({1, -1});
  auto opt = torch::TensorOptions().dtype(torch::kFloat64);
  ParamMap epl{
      {"theta_E", torch::tensor({1.2, 0.9}, opt)},    {"gamma", torch::tensor({2.1, 1.9}, opt)},
      {"e1", torch::tensor({0.1, -0.2}, opt)},        {"e2", torch::tensor({-0.05, 0.1}, opt)},
      {"center_x", torch::tensor({0.05, -0.1}, opt)}, {"center_y", torch::tensor({0.0, 0.1}, opt)}};
  ParamMap shear{{"gamma1", torch::tensor({0.03, -0.02}, opt)},
                 {"gamma2", torch::tensor({0.01, 0.04}, opt)}};
  LensModel model;
  model.add(make_mass_profile("EPL"), epl);
  model.add(make_mass_profile("SHEAR"), shear);
  auto a = model.deflection(x, y);
  auto a1 = make_mass_profile("EPL")->deflection(x, y, epl);
  auto a2 = make_mass_profile("SHEAR")->deflection(x, y, shear);
  EXPECT_TRUE(torch::allclose(a.x, a1.x + a2.x, 1e-14, 1e-14));
  auto [bx, by] = model.ray_shoot(x, y);
  EXPECT_TRUE(torch::allclose(bx, x - a.x, 1e-14, 1e-14));
  EXPECT_TRUE(torch::allclose(by, y - a.y, 1e-14, 1e-14));
  // magnification = 1/det(I - H), H from autograd of the summed deflection
  auto mu = model.magnification(x, y);
  auto xe = x.expand({2, 40}).clone().requires_grad_(true);
  auto ye = y.expand({2, 40}).clone().requires_grad_(true);
  auto d = model.deflection(xe, ye);
  auto gx = torch::autograd::grad({d.x.sum()}, {xe, ye}, {}, true);
  auto gy = torch::autograd::grad({d.y.sum()}, {ye});
  auto det = (1 - gx[0]) * (1 - gy[0]) - gx[1] * gx[1];
  EXPECT_LE(scaled_error(mu, 1.0 / det, 1e-9, 1e-12), 1.0);
  auto k = model.convergence(x, y);
  auto h = model.hessian(x, y);
  EXPECT_TRUE(torch::allclose(k, 0.5 * (h.xx + h.yy), 1e-10, 1e-12));
  // potential gradient = deflection (central difference of the summed potential)
  const double step = 1e-6;
  auto dpx = (model.potential(x + step, y) - model.potential(x - step, y)) / (2 * step);
  EXPECT_LE(scaled_error(dpx, a.x, 1e-6, 1e-8), 1.0);
  LensModel empty;
  EXPECT_EQ(empty.deflection(x, y).x.abs().sum().item<double>(), 0.0);
}

}  // namespace dslens::physics::test_mass_profiles_detail
