// The regularisation matrices of Suyu et al. (2006), checked on sources whose quadratic forms
// are known in closed form: ramps, parabolas and bilinear surfaces on an n x n grid.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "dslens/core/errors.h"
#include "dslens/model/pixel_regulariser.h"

using namespace dslens;

TEST(PixelRegulariser, QuadraticFormsOfRampsParabolasAndBilinearSurfaces) {
  const int64_t n = 6;
  const double eps = 1e-2;
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto j = torch::arange(n, f64).view({1, n}).expand({n, n});  // column index
  const auto i = torch::arange(n, f64).view({n, 1}).expand({n, n});  // row index
  const auto form = [&](const std::string& kind, const torch::Tensor& s) {
    const auto v = s.reshape({n * n});
    return v.dot(model::pixel_regulariser(kind, n, f64).mv(v)).item<double>();
  };
  const auto norm2 = [](const torch::Tensor& s) { return s.square().sum().item<double>(); };
  const auto ramp = j + 2.0 * i, parabola = j * j, bilinear = i * j;
  // Gradient: every horizontal difference of the ramp is 1 (n (n - 1) of them), every vertical
  // one 2.
  EXPECT_NEAR(form("gradient", ramp), n * (n - 1) * (1.0 + 4.0) + eps * norm2(ramp), 1e-9);
  // Curvature: a ramp and a bilinear surface have no second differences along rows or columns;
  // j^2 has 2 along every row (n (n - 2) of them).
  EXPECT_NEAR(form("curvature", ramp), eps * norm2(ramp), 1e-9);
  EXPECT_NEAR(form("curvature", bilinear), eps * norm2(bilinear), 1e-9);
  EXPECT_NEAR(form("curvature", parabola), n * (n - 2) * 4.0 + eps * norm2(parabola), 1e-9);
  EXPECT_NEAR(form("identity", parabola), norm2(parabola), 1e-9);
  // Symmetric and positive definite, so that the prior N(0, C^-1) exists.
  for (const std::string kind : {"gradient", "curvature"}) {
    const auto c = model::pixel_regulariser(kind, n, f64);
    EXPECT_TRUE(torch::allclose(c, c.t())) << kind;
    EXPECT_GT(torch::linalg_eigvalsh(c).min().item<double>(), 0.5 * eps) << kind;
  }
  EXPECT_THROW(model::pixel_regulariser("smooth", n, f64), InvalidArgument);
}

// The eigendecomposition the fit's decoder uses against the dense matrix: (V (x) V) diag(lambda)
// (V (x) V)^T must be C, row-major pixels as everywhere.
TEST(PixelRegulariser, EigendecompositionRebuildsTheDenseMatrix) {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (const int64_t n : {3, 7, 12}) {
    for (const std::string kind : {"identity", "gradient", "curvature"}) {
      const auto c = model::pixel_regulariser(kind, n, f64);
      const auto eig = model::pixel_regulariser_eigen(kind, n, f64);
      const auto vv = torch::kron(eig.basis, eig.basis);
      const auto rebuilt = vv.matmul(torch::diag(eig.eigenvalues.reshape({-1}))).matmul(vv.t());
      EXPECT_TRUE(torch::allclose(rebuilt, c, 1e-10, 1e-10)) << kind << " " << n;
      EXPECT_GE(eig.eigenvalues.min().item<double>(), 1e-2 - 1e-12) << kind;
    }
  }
}
