#include "dslens/model/pixel_regulariser.h"

#include <algorithm>

#include "dslens/core/errors.h"

namespace dslens::model {
namespace {

constexpr double kEps = 1e-2;

void check(const std::string& kind, int64_t n) {
  const auto kinds = pixel_regulariser_kinds();
  if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) {
    throw InvalidArgument("unknown source regularisation '" + kind +
                          "'; allowed: identity, gradient, curvature");
  }
  if (kind != "identity" && n < 3)
    throw InvalidArgument("a regularised source grid needs at least 3 x 3 pixels");
}

// The 1-d difference stencil of a kind: one row of D per placement along a line of pixels.
std::vector<double> stencil(const std::string& kind) {
  return kind == "gradient" ? std::vector<double>{-1.0, 1.0} : std::vector<double>{1.0, -2.0, 1.0};
}

// The 1-d difference operator [n - w + 1, n].
torch::Tensor line_operator(const std::string& kind, int64_t n,
                            const torch::TensorOptions& options) {
  const auto w = stencil(kind);
  const int64_t m = n - static_cast<int64_t>(w.size()) + 1;
  auto d = torch::zeros({m, n}, options);
  for (size_t o = 0; o < w.size(); ++o) d.diagonal(static_cast<int64_t>(o)).fill_(w[o]);
  return d;
}

}  // namespace

std::vector<std::string> pixel_regulariser_kinds() {
  return {"identity", "gradient", "curvature"};
}

torch::Tensor pixel_regulariser(const std::string& kind, int64_t n,
                                const torch::TensorOptions& options) {
  check(kind, n);
  const auto eye = torch::eye(n * n, options);
  if (kind == "identity") return eye;
  const auto d = line_operator(kind, n, options);
  const auto t = d.t().matmul(d), i = torch::eye(n, options);
  // Row-major pixels (row r, column c) -> r n + c: differences along a row act on the fast index.
  return torch::kron(i, t) + torch::kron(t, i) + kEps * eye;
}

RegulariserEigen pixel_regulariser_eigen(const std::string& kind, int64_t n,
                                         const torch::TensorOptions& options) {
  check(kind, n);
  if (kind == "identity") return {torch::eye(n, options), torch::ones({n, n}, options)};
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto d = line_operator(kind, n, f64);
  const auto [t, v] = torch::linalg_eigh(d.t().matmul(d));
  // The Gram matrix is positive semi-definite; rounding may leave its null space's t at -1e-16.
  const auto lam = t.clamp_min(0.0).unsqueeze(1) + t.clamp_min(0.0).unsqueeze(0) + kEps;
  return {v.to(options), lam.to(options)};
}

}  // namespace dslens::model
