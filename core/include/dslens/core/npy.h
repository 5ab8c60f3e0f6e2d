// NumPy .npy files from and to torch tensors.
//
// Writing: format version 1.0, little-endian, C order, with the header numpy itself writes (sorted
// keys, the spare space numpy >= 1.24 reserves for growing the first axis, padding so that the data
// starts on a 64-byte boundary), through write_file_atomically. dtypes: float64 '<f8', float32
// '<f4', float16 '<f2', int64 '<i8', int32 '<i4', int16 '<i2', int8 '|i1', uint8 '|u1', bool '|b1',
// complex64 '<c8', complex128 '<c16'; others (bfloat16, ...) throw dslens::InvalidArgument.
//
// Reading: versions 1.0, 2.0 and 3.0, the dtypes above in either byte order (and '=' native),
// C or Fortran order; the tensor is on the CPU, C-contiguous, in the matching torch dtype. A
// missing, truncated or malformed file throws dslens::FileError naming the file.
#pragma once
#include <torch/torch.h>

#include <string>

namespace dslens {

void write_npy(const std::string& path, const torch::Tensor& array);
torch::Tensor read_npy(const std::string& path);

// The complete header (magic, version, length, dict, padding, newline) write_npy writes before
// the data of `array`.
std::string npy_header(const torch::Tensor& array);
// The numpy descriptor ('<f8', '|b1', ...) for a torch dtype; InvalidArgument if none.
std::string npy_descr(torch::ScalarType dtype);

}  // namespace dslens
