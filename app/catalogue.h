// A fit run's results as one table: a row per lens, read from its summary.json. `dslens fit`
// writes DIR/catalogue.csv; `dslens catalogue` joins the outputs of many runs (the shards of a
// SLURM array) into one. Columns: lens, folder, the reduced chi-square at the MAP (the image's and
// the arcs'), divergences, the largest R-hat and smallest bulk ESS over all parameters, the number
// of warnings, then per scalar parameter and derived quantity (q_*, gamma_ext_*, magnification;
// not the VAE latents or source pixels): its median and central 68 % interval (V_q50, V_q16,
// V_q84), its R-hat (V_rhat), its value at the MAP (V_map; map.json's) and, for mocks, its truth
// (V_truth).
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dslens::app {

// A finished fit output's lens folders, from its index.json: RUN/LENS, or RUN itself for a
// one-lens run, else the folder recorded there (the run may have been moved since).
// FileError when index.json is missing or malformed.
std::vector<std::filesystem::path> fit_lens_folders(const std::filesystem::path& run);

// The CSV of the lenses in `lens_dirs` (FileError naming a summary.json that is missing or
// malformed). Columns are the union over the lenses, in the order first seen; a lens without a
// column has an empty cell.
struct Catalogue {
  std::string csv;
  std::vector<std::string> lenses;                 // the rows' lens names (summary.json's "lens")
  std::vector<std::string> columns;                // the CSV's header
  std::vector<std::vector<nlohmann::json>> cells;  // [row][column]: number, string or null
};
Catalogue catalogue_csv(const std::vector<std::filesystem::path>& lens_dirs);

// The same table as a FITS binary table (HDU 1, EXTNAME CATALOGUE), for TOPCAT or astropy: a
// column holding any string is a character column, every other a float64 one with NaN for an
// empty cell. Written atomically.
void write_catalogue_fits(const std::string& path, const Catalogue& table);

}  // namespace dslens::app
