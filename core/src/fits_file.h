// Internal to core/src: the CFITSIO plumbing shared by the image (fits.cpp) and table
// (fits_table.cpp) readers. Errors are FileError naming the file (and HDU where the caller says).
#pragma once
#include <fitsio.h>
#include <torch/torch.h>

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "dslens/core/errors.h"

namespace dslens::fits_io {

inline std::string status_text(int status) {
  char text[FLEN_STATUS];
  fits_get_errstatus(status, text);
  return std::string(text);
}

// Owns an open fitsfile*; closes it on scope exit.
struct FitsFile {
  fitsfile* ptr = nullptr;
  std::string path;
  FitsFile() = default;
  FitsFile(const FitsFile&) = delete;
  FitsFile& operator=(const FitsFile&) = delete;
  ~FitsFile() {
    int status = 0;
    if (ptr) fits_close_file(ptr, &status);
  }
};

// Creates the file `tmp` (a fresh temporary name; '!' lets CFITSIO create it) for writing what
// will become `path`, the name errors give.
inline void create_for_write(FitsFile& f, const std::string& tmp, const std::string& path) {
  int status = 0;
  const std::string target = "!" + tmp;
  if (fits_create_file(&f.ptr, target.c_str(), &status)) {
    f.ptr = nullptr;
    throw FileError("cannot create FITS file '" + path + "': " + status_text(status));
  }
}

// Ends a write: FileError naming `path` when `status` says a step failed, else closes the file
// and checks that too.
inline void finish_write(FitsFile& f, int status, const std::string& path) {
  if (status) throw FileError("cannot write FITS file '" + path + "': " + status_text(status));
  fits_close_file(f.ptr, &status);
  f.ptr = nullptr;
  if (status) throw FileError("cannot write FITS file '" + path + "': " + status_text(status));
}

inline void open_for_read(FitsFile& f, const std::string& path) {
  f.path = path;
  if (!std::filesystem::exists(path)) throw FileError("FITS file '" + path + "' does not exist");
  int status = 0;
  if (fits_open_file(&f.ptr, path.c_str(), READONLY, &status)) {
    f.ptr = nullptr;
    throw FileError("FITS file '" + path + "' cannot be opened: " + status_text(status));
  }
}

// Reads the image of the current HDU as float64 [NAXISn, ..., NAXIS1]; `at` names file and HDU.
inline torch::Tensor read_current_image(FitsFile& f, const std::string& at) {
  int status = 0, type = 0;
  fits_get_hdu_type(f.ptr, &type, &status);
  if (type != IMAGE_HDU) throw FileError(at + ": not an image HDU (it is a table)");
  int naxis = 0;
  fits_get_img_dim(f.ptr, &naxis, &status);
  if (status || naxis <= 0) throw FileError(at + ": holds no image data");
  std::vector<long> naxes(naxis);
  fits_get_img_size(f.ptr, naxis, naxes.data(), &status);
  std::vector<int64_t> shape;
  int64_t n = 1;
  for (int i = naxis - 1; i >= 0; --i) {
    shape.push_back(naxes[i]);
    n *= naxes[i];
  }
  if (n <= 0) throw FileError(at + ": image has zero size");
  torch::Tensor out = torch::empty(shape, torch::kFloat64);
  std::vector<long> first(naxis, 1);
  int anynul = 0;
  double nulval = std::numeric_limits<double>::quiet_NaN();
  if (fits_read_pix(f.ptr, TDOUBLE, first.data(), n, &nulval, out.data_ptr<double>(), &anynul,
                    &status)) {
    throw FileError(at + ": cannot read pixels: " + status_text(status));
  }
  return out;
}

}  // namespace dslens::fits_io
