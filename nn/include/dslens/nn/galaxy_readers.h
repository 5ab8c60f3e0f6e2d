// Readers of real galaxy images: GalSim's RealGalaxyCatalog, a FITS cube [N, H, W] and a folder
// of FITS images. Each returns the raw images (float64, CPU, [H, W], sizes may differ) with a
// name for error messages ("file, HDU n" or "file[i]"). Errors are FileError naming file and HDU.
#pragma once
#include <torch/torch.h>

#include <limits>
#include <string>
#include <vector>

namespace dslens::nn {

struct GalaxyImage {
  torch::Tensor image;  // [H, W] float64 CPU
  std::string name;     // where it came from, for messages
  double pixel_scale = std::numeric_limits<double>::quiet_NaN();     // arcsec/pixel if known
  double noise_variance = std::numeric_limits<double>::quiet_NaN();  // if known
};

// GalSim RealGalaxyCatalog: `catalog` is the catalog FITS file (binary table in HDU 1 with
// GAL_FILENAME, GAL_HDU, PIXEL_SCALE, NOISE_VARIANCE); image files are relative to its folder.
// A folder is accepted if it holds exactly one real_galaxy_catalog_*.fits (not *_fits.fits).
// `max_count` > 0 reads only the first rows.
std::vector<GalaxyImage> read_galsim_catalog(const std::string& catalog, int64_t max_count = 0);

// Resolves a catalog path given as a folder to the catalog file inside it (see above).
std::string resolve_galsim_catalog(const std::string& path);

// A FITS cube [N, H, W] (a 2-d image counts as N = 1) in HDU `hdu` (-1: first image HDU).
std::vector<GalaxyImage> read_fits_cube(const std::string& path, int hdu = -1,
                                        int64_t max_count = 0);

// Every *.fits, *.fit, *.fts (optionally .gz) file in `dir`, sorted by name, each a 2-d image in
// its first image HDU. InputError if the folder holds none.
std::vector<GalaxyImage> read_fits_dir(const std::string& dir, int64_t max_count = 0);

}  // namespace dslens::nn
