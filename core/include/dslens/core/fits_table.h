// FITS binary (and ASCII) table columns through CFITSIO, and reading many image HDUs of one file.
//
//   auto names = read_fits_string_column(catalog, "GAL_FILENAME");   // HDU 1 by default
//   auto scale = read_fits_numeric_column(catalog, "PIXEL_SCALE");
//
// Column names match case-insensitively and exactly (no CFITSIO wildcards). Errors are FileError
// naming the file, the HDU and the column.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "dslens/core/fits.h"

namespace dslens {

// Shape of a table HDU.
struct FitsTableInfo {
  int64_t rows = 0;
  std::vector<std::string> columns;  // TTYPEn, in order
};

// Row count and column names of a table HDU (default: HDU 1, the first extension).
FitsTableInfo read_fits_table_info(const std::string& path,
                                   const FitsHdu& hdu = FitsHdu::number(1));

// A character column, one string per row, trailing blanks removed.
std::vector<std::string> read_fits_string_column(const std::string& path, const std::string& column,
                                                 const FitsHdu& hdu = FitsHdu::number(1));
// A scalar numeric column (integer, float or logical) as doubles; null cells read as NaN.
std::vector<double> read_fits_numeric_column(const std::string& path, const std::string& column,
                                             const FitsHdu& hdu = FitsHdu::number(1));
// A scalar numeric column whose values must all be integers (FileError naming the row otherwise).
std::vector<long long> read_fits_integer_column(const std::string& path, const std::string& column,
                                                const FitsHdu& hdu = FitsHdu::number(1));

// One column of a table to write: text (one string per row) or numbers (NaN for an empty cell).
struct FitsTableColumn {
  std::string name;
  bool is_text = false;
  std::vector<std::string> text;
  std::vector<double> numbers;
};

// Writes a binary table as HDU 1 (EXTNAME `extname`) after an empty primary HDU, atomically:
// text columns as character columns as wide as their longest string, numbers as float64 (TFORM
// 1D). InvalidArgument when the columns' lengths differ or a name is empty or repeated (FITS column
// names match case-insensitively); FileError naming the file when CFITSIO fails.
void write_fits_table(const std::string& path, const std::vector<FitsTableColumn>& columns,
                      const std::string& extname);

// Reads the 2-d (or N-d) images in HDUs `hdus` (0 = primary) of one file, opening it once, as
// float64 CPU tensors in the order asked. Cheaper than read_fits_image per HDU for files with
// many HDUs (GalSim's RealGalaxyCatalog image files hold ~1000).
std::vector<torch::Tensor> read_fits_image_hdus(const std::string& path,
                                                const std::vector<int>& hdus);

}  // namespace dslens
