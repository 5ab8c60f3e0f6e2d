// report.png of `dslens fit`: data, model, normalised residuals, the reconstructed source with the
// caustics, the convergence with the critical curves, a corner plot of the main lens parameters
// and the fit's warnings, in one figure about 1600 pixels wide.
#pragma once
#include <array>
#include <optional>
#include <string>
#include <vector>

#include "dslens/physics/image_model.h"

namespace dslens::app {

struct FitReportInputs {
  std::string title;                                // e.g. lens name + "reduced chi2 = 1.02"
  physics::PixelGrid grid;                          // the data grid
  torch::Tensor data, model, normalized_residuals;  // [ny, nx]
  torch::Tensor mask;                     // [ny, nx] bool, true = fitted; may be undefined
  torch::Tensor source;                   // [h, w] reconstructed source; may be undefined
  std::array<double, 4> source_extent{};  // xmin, xmax, ymin, ymax (arcsec)
  // The source panel's title (the posterior mean's, where report.png shows it).
  std::string source_title = "source + caustics";
  std::vector<std::array<double, 4>> caustics, critical;  // segments (x0, y0, x1, y1), arcsec
  // The data's image positions (arcsec; docs/fit.md, "Image positions"), crossed on the data and
  // residual panels, and the same traced back through the MAP's lens, crossed on the source's:
  // where the lens is right, each feature's crosses meet there.
  std::vector<std::array<double, 2>> image_positions, traced_positions;
  torch::Tensor convergence;  // [H, W] covering the data grid's extent; may be undefined
  torch::Tensor
      corner_draws;  // [N, P] posterior draws of the main lens parameters; may be undefined
  std::vector<std::string> corner_names;             // P names
  std::vector<std::optional<double>> corner_truths;  // empty or P (nullopt: no truth)
  std::vector<std::string> notes;                    // warnings printed under the panels
};

// Draws the figure and writes it atomically as PNG. Top row: data (asinh stretch), model (same
// limits), normalised residuals (coolwarm, -5..5, pixels outside the mask grey), the source with
// the caustics (cyan), log10 convergence with the critical curves (red); each with a title, a
// colour bar and a scale bar in arcsec; image positions as green crosses. Below: the corner plot
// (when draws are given) and the notes. Tensors may live on any device. Throws InvalidArgument when
// data, model, residuals or mask are not [grid.ny, grid.nx], or the corner inputs disagree (see
// plot::corner_plot).
void write_fit_report(const std::string& png_path, const FitReportInputs& in);

}  // namespace dslens::app
