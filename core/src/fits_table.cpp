#include "dslens/core/fits_table.h"

#include <fitsio.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"
#include "fits_file.h"

namespace dslens::fits_table_detail {

std::string where(const std::string& path, const FitsHdu& hdu) {
  return "FITS file '" + path + "', " + hdu.describe();
}

int hdu_count(fits_io::FitsFile& f) {
  int status = 0, count = 0;
  fits_get_num_hdus(f.ptr, &count, &status);
  return count;
}

// Moves to the table HDU `hdu` (the default selector means HDU 1).
void move_to_table(fits_io::FitsFile& f, const FitsHdu& hdu) {
  int status = 0, type = 0;
  const FitsHdu h = (hdu.name.empty() && hdu.index < 0) ? FitsHdu::number(1) : hdu;
  if (!h.name.empty()) {
    if (fits_movnam_hdu(f.ptr, ANY_HDU, const_cast<char*>(h.name.c_str()), 0, &status)) {
      throw FileError("FITS file '" + f.path + "': no HDU named '" + h.name + "'");
    }
  } else if (fits_movabs_hdu(f.ptr, h.index + 1, &type, &status)) {
    throw FileError("FITS file '" + f.path + "': HDU " + std::to_string(h.index) +
                    " does not exist (" + std::to_string(hdu_count(f)) + " HDUs)");
  }
  status = 0;
  fits_get_hdu_type(f.ptr, &type, &status);
  if (type != BINARY_TBL && type != ASCII_TBL) {
    throw FileError(where(f.path, h) + ": not a table HDU (it is an image)");
  }
}

std::string upper(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string rtrim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

std::vector<std::string> column_names(fits_io::FitsFile& f) {
  int status = 0, ncols = 0;
  fits_get_num_cols(f.ptr, &ncols, &status);
  std::vector<std::string> names;
  for (int i = 1; i <= ncols; ++i) {
    char value[FLEN_VALUE] = {0};
    const std::string key = "TTYPE" + std::to_string(i);
    status = 0;
    if (fits_read_key(f.ptr, TSTRING, key.c_str(), value, nullptr, &status)) value[0] = '\0';
    names.push_back(rtrim(value));
  }
  return names;
}

long long row_count(fits_io::FitsFile& f) {
  int status = 0;
  LONGLONG rows = 0;
  fits_get_num_rowsll(f.ptr, &rows, &status);
  return rows;
}

// 1-based column number of `column`, matched case-insensitively; FileError listing the columns.
int find_column(fits_io::FitsFile& f, const FitsHdu& hdu, const std::string& column) {
  const auto names = column_names(f);
  for (size_t i = 0; i < names.size(); ++i) {
    if (upper(names[i]) == upper(column)) return static_cast<int>(i) + 1;
  }
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw FileError(where(f.path, hdu) + ": no column '" + column + "' (columns: " + list + ")");
}

bool is_numeric_type(int typecode) {
  switch (typecode) {
    case TBYTE:
    case TSBYTE:
    case TSHORT:
    case TUSHORT:
    case TINT:
    case TUINT:
    case TLONG:
    case TULONG:
    case TLONGLONG:
#ifdef TULONGLONG
    case TULONGLONG:
#endif
    case TFLOAT:
    case TDOUBLE:
      return true;
    default:
      return false;
  }
}

std::vector<double> read_numeric(const std::string& path, const std::string& column,
                                 const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  move_to_table(f, hdu);
  const int col = find_column(f, hdu, column);
  const std::string at = where(path, hdu) + ", column '" + column + "'";
  int status = 0, typecode = 0;
  long repeat = 0, width = 0;
  fits_get_coltype(f.ptr, col, &typecode, &repeat, &width, &status);
  if (status)
    throw FileError(at + ": cannot read the column type: " + fits_io::status_text(status));
  if (typecode < 0) throw FileError(at + ": variable-length array columns are not supported");
  if (!is_numeric_type(typecode)) {
    throw FileError(at + ": not a numeric column (CFITSIO type code " + std::to_string(typecode) +
                    ")");
  }
  if (repeat != 1) {
    throw FileError(at + ": a vector column (" + std::to_string(repeat) +
                    " values per row); only scalar columns are supported");
  }
  const long long rows = row_count(f);
  std::vector<double> out(static_cast<size_t>(rows));
  if (rows == 0) return out;
  double nulval = std::numeric_limits<double>::quiet_NaN();
  int anynul = 0;
  if (fits_read_col(f.ptr, TDOUBLE, col, 1, 1, rows, &nulval, out.data(), &anynul, &status)) {
    throw FileError(at + ": cannot read: " + fits_io::status_text(status));
  }
  return out;
}

}  // namespace dslens::fits_table_detail

namespace dslens {

FitsTableInfo read_fits_table_info(const std::string& path, const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  fits_table_detail::move_to_table(f, hdu);
  FitsTableInfo info;
  info.rows = fits_table_detail::row_count(f);
  info.columns = fits_table_detail::column_names(f);
  return info;
}

std::vector<std::string> read_fits_string_column(const std::string& path, const std::string& column,
                                                 const FitsHdu& hdu) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  fits_table_detail::move_to_table(f, hdu);
  const int col = fits_table_detail::find_column(f, hdu, column);
  const std::string at = fits_table_detail::where(path, hdu) + ", column '" + column + "'";
  int status = 0, typecode = 0;
  long repeat = 0, width = 0;
  fits_get_coltype(f.ptr, col, &typecode, &repeat, &width, &status);
  if (status) {
    throw FileError(at + ": cannot read the column type: " + fits_io::status_text(status));
  }
  if (typecode != TSTRING) {
    throw FileError(at + ": not a character column (CFITSIO type code " + std::to_string(typecode) +
                    ")");
  }
  const long long rows = fits_table_detail::row_count(f);
  const size_t len = static_cast<size_t>(std::max(repeat, width)) + 1;
  std::vector<std::vector<char>> buffers(static_cast<size_t>(rows), std::vector<char>(len, '\0'));
  std::vector<char*> pointers;
  for (auto& b : buffers) pointers.push_back(b.data());
  std::vector<std::string> out;
  if (rows == 0) return out;
  char nulstr[] = "";
  int anynul = 0;
  if (fits_read_col(f.ptr, TSTRING, col, 1, 1, rows, nulstr, pointers.data(), &anynul, &status)) {
    throw FileError(at + ": cannot read: " + fits_io::status_text(status));
  }
  for (const auto& b : buffers) out.push_back(fits_table_detail::rtrim(std::string(b.data())));
  return out;
}

std::vector<double> read_fits_numeric_column(const std::string& path, const std::string& column,
                                             const FitsHdu& hdu) {
  return fits_table_detail::read_numeric(path, column, hdu);
}

std::vector<long long> read_fits_integer_column(const std::string& path, const std::string& column,
                                                const FitsHdu& hdu) {
  const auto values = fits_table_detail::read_numeric(path, column, hdu);
  std::vector<long long> out;
  out.reserve(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!std::isfinite(v) || v != std::floor(v)) {
      throw FileError(fits_table_detail::where(path, hdu) + ", column '" + column + "', row " +
                      std::to_string(i + 1) + ": value " + std::to_string(v) +
                      " is not an integer");
    }
    out.push_back(static_cast<long long>(v));
  }
  return out;
}

std::vector<torch::Tensor> read_fits_image_hdus(const std::string& path,
                                                const std::vector<int>& hdus) {
  fits_io::FitsFile f;
  fits_io::open_for_read(f, path);
  const int count = fits_table_detail::hdu_count(f);
  std::vector<torch::Tensor> out;
  out.reserve(hdus.size());
  for (int hdu : hdus) {
    const std::string at = fits_table_detail::where(path, FitsHdu::number(hdu));
    int status = 0, type = 0;
    if (hdu < 0 || fits_movabs_hdu(f.ptr, hdu + 1, &type, &status)) {
      throw FileError("FITS file '" + path + "': HDU " + std::to_string(hdu) + " does not exist (" +
                      std::to_string(count) + " HDUs)");
    }
    out.push_back(fits_io::read_current_image(f, at));
  }
  return out;
}

void write_fits_table(const std::string& path, const std::vector<FitsTableColumn>& columns,
                      const std::string& extname) {
  if (columns.empty()) throw InvalidArgument("write_fits_table: no columns for '" + path + "'");
  const auto length = [](const FitsTableColumn& c) {
    return c.is_text ? c.text.size() : c.numbers.size();
  };
  const size_t rows = length(columns.front());
  std::set<std::string> seen;
  std::vector<std::string> forms;
  for (const auto& c : columns) {
    std::string upper = c.name;
    for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    if (c.name.empty() || !seen.insert(upper).second) {
      throw InvalidArgument("write_fits_table: column name '" + c.name + "' of '" + path +
                            "' is empty or repeated");
    }
    if (length(c) != rows) {
      throw InvalidArgument("write_fits_table: column '" + c.name + "' of '" + path + "' has " +
                            std::to_string(length(c)) + " rows, the first " + std::to_string(rows));
    }
    size_t width = 1;
    for (const auto& t : c.text) width = std::max(width, t.size());
    forms.push_back(c.is_text ? std::to_string(width) + "A" : "1D");
  }
  write_file_atomically(path, [&](const std::string& tmp) {
    fits_io::FitsFile f;
    fits_io::create_for_write(f, tmp, path);
    int status = 0;
    std::vector<char*> ttype, tform;
    for (size_t i = 0; i < columns.size(); ++i) {
      ttype.push_back(const_cast<char*>(columns[i].name.c_str()));
      tform.push_back(const_cast<char*>(forms[i].c_str()));
    }
    fits_create_tbl(f.ptr, BINARY_TBL, static_cast<LONGLONG>(rows),
                    static_cast<int>(columns.size()), ttype.data(), tform.data(), nullptr,
                    const_cast<char*>(extname.c_str()), &status);
    for (size_t i = 0; i < columns.size() && rows > 0 && !status; ++i) {
      const auto& c = columns[i];
      if (c.is_text) {
        std::vector<char*> cells;
        for (const auto& t : c.text) cells.push_back(const_cast<char*>(t.c_str()));
        fits_write_col(f.ptr, TSTRING, static_cast<int>(i) + 1, 1, 1, static_cast<LONGLONG>(rows),
                       cells.data(), &status);
      } else {
        std::vector<double> v = c.numbers;
        fits_write_col(f.ptr, TDOUBLE, static_cast<int>(i) + 1, 1, 1, static_cast<LONGLONG>(rows),
                       v.data(), &status);
      }
    }
    fits_io::finish_write(f, status, path);
  });
}

}  // namespace dslens
