#include "dslens/core/fits.h"

#include <fitsio.h>

#include <filesystem>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "fits_file.h"

namespace dslens {
namespace {

// Moves to the requested HDU; for the default, the first HDU that holds image data.
void move_to_hdu(fits_io::FitsFile& f, const std::string& path, const FitsHdu& hdu) {
  int status = 0;
  int type = 0;
  if (!hdu.name.empty()) {
    if (fits_movnam_hdu(f.ptr, ANY_HDU, const_cast<char*>(hdu.name.c_str()), 0, &status)) {
      throw FileError("FITS file '" + path + "': no HDU named '" + hdu.name + "'");
    }
    return;
  }
  if (hdu.index >= 0) {
    if (fits_movabs_hdu(f.ptr, hdu.index + 1, &type, &status)) {
      throw FileError("FITS file '" + path + "': HDU " + std::to_string(hdu.index) +
                      " does not exist (" + std::to_string(fits_hdu_count(path)) + " HDUs)");
    }
    return;
  }
  int count = 0;
  fits_get_num_hdus(f.ptr, &count, &status);
  for (int i = 1; i <= count; ++i) {
    status = 0;
    fits_movabs_hdu(f.ptr, i, &type, &status);
    if (status || type != IMAGE_HDU) continue;
    int naxis = 0;
    fits_get_img_dim(f.ptr, &naxis, &status);
    if (!status && naxis > 0) return;
  }
  throw FileError("FITS file '" + path + "': no HDU holds image data");
}

}  // namespace

std::string FitsHdu::describe() const {
  if (!name.empty()) return "HDU '" + name + "'";
  if (index >= 0) return "HDU " + std::to_string(index);
  return "first image HDU";
}

int fits_hdu_count(const std::string& path) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  int status = 0, count = 0;
  fits_get_num_hdus(f.ptr, &count, &status);
  return count;
}

torch::Tensor read_fits_image(const std::string& path, const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  move_to_hdu(f, path, hdu);
  return fits_io::read_current_image(f, "FITS file '" + path + "', " + hdu.describe());
}

std::map<std::string, double> read_fits_numeric_header(const std::string& path,
                                                       const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  move_to_hdu(f, path, hdu);
  int status = 0, nkeys = 0;
  fits_get_hdrspace(f.ptr, &nkeys, nullptr, &status);
  std::map<std::string, double> out;
  for (int i = 1; i <= nkeys; ++i) {
    char key[FLEN_KEYWORD], value[FLEN_VALUE], comment[FLEN_COMMENT];
    status = 0;
    if (fits_read_keyn(f.ptr, i, key, value, comment, &status)) continue;
    char* end = nullptr;
    const double v = std::strtod(value, &end);
    if (end != value && *end == '\0') out[key] = v;
  }
  return out;
}

void write_fits_image(const std::string& path, const torch::Tensor& image,
                      const std::vector<FitsCard>& cards, bool as_float32) {
  if (image.dim() < 1) throw InvalidArgument("write_fits_image: a scalar is not an image");
  torch::Tensor data = image.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  write_file_atomically(path, [&](const std::string& tmp) {
    fits_io::FitsFile f;
    fits_io::create_for_write(f, tmp, path);
    int status = 0;
    std::vector<long> naxes;
    for (int64_t i = data.dim() - 1; i >= 0; --i) naxes.push_back(data.size(i));
    fits_create_img(f.ptr, as_float32 ? FLOAT_IMG : DOUBLE_IMG, static_cast<int>(naxes.size()),
                    naxes.data(), &status);
    for (const auto& card : cards) {
      char* comment = const_cast<char*>(card.comment.c_str());
      char* key = const_cast<char*>(card.key.c_str());
      if (auto* d = std::get_if<double>(&card.value)) {
        double v = *d;
        fits_update_key(f.ptr, TDOUBLE, key, &v, comment, &status);
      } else if (auto* i = std::get_if<long long>(&card.value)) {
        LONGLONG v = *i;
        fits_update_key(f.ptr, TLONGLONG, key, &v, comment, &status);
      } else if (auto* s = std::get_if<std::string>(&card.value)) {
        fits_update_key(f.ptr, TSTRING, key, const_cast<char*>(s->c_str()), comment, &status);
      } else if (auto* b = std::get_if<bool>(&card.value)) {
        int v = *b ? 1 : 0;
        fits_update_key(f.ptr, TLOGICAL, key, &v, comment, &status);
      }
    }
    std::vector<long> first(naxes.size(), 1);
    fits_write_pix(f.ptr, TDOUBLE, first.data(), data.numel(), data.data_ptr<double>(), &status);
    fits_io::finish_write(f, status, path);
  });
}

}  // namespace dslens
