#include "dslens/nn/galaxy_readers.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>

#include "dslens/core/errors.h"
#include "dslens/core/fits.h"
#include "dslens/core/fits_table.h"

namespace dslens::nn::galaxy_readers_detail {

namespace fs = std::filesystem;

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_fits_name(const std::string& name) {
  std::string n = lower(name);
  if (ends_with(n, ".gz")) n = n.substr(0, n.size() - 3);
  return ends_with(n, ".fits") || ends_with(n, ".fit") || ends_with(n, ".fts");
}

std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

}  // namespace dslens::nn::galaxy_readers_detail

namespace dslens::nn {

std::string resolve_galsim_catalog(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) throw FileError("GalSim catalog '" + path + "' does not exist");
  if (!fs::is_directory(path)) return path;
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(path)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.rfind("real_galaxy_catalog_", 0) == 0 &&
        galaxy_readers_detail::ends_with(name, ".fits") &&
        !galaxy_readers_detail::ends_with(name, "_fits.fits")) {
      found.push_back(e.path().string());
    }
  }
  if (found.size() != 1) {
    throw FileError("folder '" + path + "' holds " + std::to_string(found.size()) +
                    " GalSim catalogs (real_galaxy_catalog_*.fits, not *_fits.fits); expected "
                    "exactly one: give the catalog file as the path");
  }
  return found.front();
}

std::vector<GalaxyImage> read_galsim_catalog(const std::string& catalog, int64_t max_count) {
  namespace fs = std::filesystem;
  const std::string path = resolve_galsim_catalog(catalog);
  const auto files = read_fits_string_column(path, "GAL_FILENAME");
  const auto hdus = read_fits_integer_column(path, "GAL_HDU");
  const auto scales = read_fits_numeric_column(path, "PIXEL_SCALE");
  const auto noise = read_fits_numeric_column(path, "NOISE_VARIANCE");
  size_t n = files.size();
  if (max_count > 0) n = std::min(n, static_cast<size_t>(max_count));
  if (n == 0) throw InputError("GalSim catalog '" + path + "' has no rows (HDU 1 is empty)");
  const fs::path dir = fs::path(path).parent_path();
  // Rows grouped by image file (each file opened once), in order of first appearance.
  std::vector<std::string> order;
  std::map<std::string, std::vector<size_t>> rows_of;
  for (size_t i = 0; i < n; ++i) {
    if (files[i].empty()) {
      throw FileError("GalSim catalog '" + path + "', HDU 1, column 'GAL_FILENAME', row " +
                      std::to_string(i + 1) + ": empty file name");
    }
    if (!rows_of.count(files[i])) order.push_back(files[i]);
    rows_of[files[i]].push_back(i);
  }
  std::vector<GalaxyImage> out(n);
  for (const auto& file : order) {
    const auto& rows = rows_of[file];
    const std::string image_path = (dir / file).string();
    std::vector<int> hdu_list;
    for (size_t r : rows) hdu_list.push_back(static_cast<int>(hdus[r]));
    std::vector<torch::Tensor> images;
    try {
      images = read_fits_image_hdus(image_path, hdu_list);
    } catch (const FileError& e) {
      throw FileError(std::string(e.what()) + " (named by GalSim catalog '" + path + "', row " +
                      std::to_string(rows.front() + 1) + ")");
    }
    for (size_t k = 0; k < rows.size(); ++k) {
      const size_t r = rows[k];
      out[r].image = images[k];
      out[r].name = "'" + image_path + "', HDU " + std::to_string(hdus[r]) + " (catalog row " +
                    std::to_string(r + 1) + ")";
      out[r].pixel_scale = scales[r];
      out[r].noise_variance = noise[r];
    }
  }
  return out;
}

std::vector<GalaxyImage> read_fits_cube(const std::string& path, int hdu, int64_t max_count) {
  const FitsHdu which = hdu >= 0 ? FitsHdu::number(hdu) : FitsHdu::primary_or_first_image();
  torch::Tensor cube = read_fits_image(path, which);
  if (cube.dim() == 2) cube = cube.unsqueeze(0);
  if (cube.dim() != 3) {
    throw FileError("FITS file '" + path + "', " + which.describe() +
                    ": expected a cube [N, H, W] or an image [H, W], got shape " +
                    galaxy_readers_detail::shape_text(cube));
  }
  int64_t n = cube.size(0);
  if (max_count > 0) n = std::min(n, max_count);
  std::vector<GalaxyImage> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    GalaxyImage g;
    g.image = cube[i];
    g.name = "'" + path + "', " + which.describe() + ", plane " + std::to_string(i);
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<GalaxyImage> read_fits_dir(const std::string& dir, int64_t max_count) {
  namespace fs = std::filesystem;
  if (!fs::exists(dir)) throw FileError("folder '" + dir + "' does not exist");
  if (!fs::is_directory(dir)) throw FileError("'" + dir + "' is not a folder");
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && galaxy_readers_detail::is_fits_name(e.path().filename().string())) {
      paths.push_back(e.path().string());
    }
  }
  if (paths.empty()) {
    throw InputError("folder '" + dir +
                     "' holds no FITS images (*.fits, *.fit, *.fts, optionally .gz)");
  }
  std::sort(paths.begin(), paths.end());
  if (max_count > 0 && static_cast<int64_t>(paths.size()) > max_count) paths.resize(max_count);
  std::vector<GalaxyImage> out;
  out.reserve(paths.size());
  for (const auto& p : paths) {
    torch::Tensor img = read_fits_image(p);
    while (img.dim() > 2 && img.size(0) == 1) img = img.squeeze(0);
    GalaxyImage g;
    g.image = img;
    g.name = "'" + p + "'";
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace dslens::nn
