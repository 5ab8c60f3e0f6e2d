// NumPy .npy I/O: byte-exact headers as numpy writes them, round trips, Fortran order, big-endian
// input and malformed files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "dslens/core/errors.h"
#include "dslens/core/npy.h"
#include "test_support.h"

namespace npy_test {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A version 1.0 header with an explicit dict, padded to 64 bytes as numpy does.
std::string header_v1(const std::string& dict) {
  std::string h = dict;
  const size_t pad = 64 - ((10 + h.size() + 1) % 64);
  h += std::string(pad, ' ') + "\n";
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h;
}

TEST(Npy, HeaderIsByteExactWithNumpy) {
  // np.save("a.npy", np.arange(6, dtype="<f8").reshape(2, 3)) with numpy >= 1.24: 128-byte header.
  const std::string expected = std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                               "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }" +
                               std::string(58, ' ') + "\n";
  ASSERT_EQ(expected.size(), 128u);
  const auto a = torch::arange(6, torch::kFloat64).reshape({2, 3});
  EXPECT_EQ(dslens::npy_header(a), expected);

  const auto dir = dslens::testing::temp_dir("npy_header");
  dslens::write_npy(dir + "/a.npy", a);
  const auto bytes = read_bytes(dir + "/a.npy");
  ASSERT_EQ(bytes.size(), 128u + 6 * 8);
  EXPECT_EQ(bytes.substr(0, 128), expected);
  double values[6];
  std::memcpy(values, bytes.data() + 128, sizeof(values));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(values[i], i);

  // np.zeros(4, dtype=bool): 1-tuple shape and the '|' byte order of 1-byte types.
  EXPECT_EQ(dslens::npy_header(torch::zeros({4}, torch::kBool)),
            std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                "{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }" + std::string(60, ' ') +
                "\n");
  // np.array(7, dtype='<i8'): 0-d, no spare space for growth.
  EXPECT_EQ(dslens::npy_header(torch::tensor(int64_t{7})),
            std::string("\x93NUMPY\x01\x00\x76\x00", 10) +
                "{'descr': '<i8', 'fortran_order': False, 'shape': (), }" + std::string(62, ' ') +
                "\n");
  EXPECT_EQ(dslens::npy_descr(torch::kFloat32), "<f4");
  EXPECT_EQ(dslens::npy_descr(torch::kUInt8), "|u1");
  EXPECT_EQ(dslens::npy_descr(torch::kComplexDouble), "<c16");
  EXPECT_THROW(dslens::npy_descr(torch::kBFloat16), dslens::InvalidArgument);
}

TEST(Npy, RoundTripsDtypesAndShapes) {
  const auto dir = dslens::testing::temp_dir("npy_roundtrip");
  torch::manual_seed(3);
  const std::vector<torch::Tensor> arrays = {
      torch::randn({3, 5, 7}, torch::kFloat64),
      torch::randn({4, 2}, torch::kFloat32),
      torch::randn({5}, torch::kFloat32).to(torch::kFloat16),
      torch::randint(-1000000, 1000000, {6, 3}, torch::kInt64),
      torch::randint(-1000, 1000, {9}, torch::kInt32),
      torch::randint(-100, 100, {9}, torch::kInt16),
      torch::randint(-100, 100, {2, 2}, torch::kInt8),
      torch::randint(0, 255, {10}, torch::kUInt8),
      torch::rand({3, 3}) > 0.5,
      torch::randn({2, 3}, torch::kComplexDouble),
      torch::randn({2}, torch::kComplexFloat),
      torch::zeros({0, 4}, torch::kFloat64),
      torch::tensor(3.25, torch::kFloat64),
      torch::randn({4, 6}, torch::kFloat64).t(),  // non-contiguous input
  };
  for (size_t i = 0; i < arrays.size(); ++i) {
    const auto path = dir + "/a" + std::to_string(i) + ".npy";
    dslens::write_npy(path, arrays[i]);
    const auto back = dslens::read_npy(path);
    EXPECT_EQ(back.scalar_type(), arrays[i].scalar_type()) << i;
    EXPECT_EQ(back.sizes(), arrays[i].sizes()) << i;
    EXPECT_TRUE(torch::equal(back, arrays[i])) << i;
    EXPECT_EQ(read_bytes(path).size(),
              dslens::npy_header(arrays[i]).size() + arrays[i].numel() * arrays[i].element_size())
        << i;
  }
  // Data start on a 64-byte boundary.
  for (size_t i = 0; i < arrays.size(); ++i) {
    EXPECT_EQ(dslens::npy_header(arrays[i]).size() % 64, 0u) << i;
  }
  // No temporary files are left behind.
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().extension(), ".npy") << e.path();
  }
}

TEST(Npy, ReadsFortranOrderBigEndianAndOlderHeaders) {
  const auto dir = dslens::testing::temp_dir("npy_read");
  // np.asfortranarray(np.arange(6.).reshape(2, 3)): column-major data 0, 3, 1, 4, 2, 5.
  {
    std::string bytes = header_v1("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }");
    const double data[6] = {0, 3, 1, 4, 2, 5};
    bytes.append(reinterpret_cast<const char*>(data), sizeof(data));
    write_bytes(dir + "/f.npy", bytes);
    const auto t = dslens::read_npy(dir + "/f.npy");
    EXPECT_TRUE(torch::equal(t, torch::arange(6, torch::kFloat64).reshape({2, 3})));
    EXPECT_TRUE(t.is_contiguous());
  }
  // '>f8' (big-endian) and '>i4'.
  {
    std::string bytes = header_v1("{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }");
    for (double v : {1.5, -2.0}) {
      unsigned char b[8];
      std::memcpy(b, &v, 8);
      for (int i = 7; i >= 0; --i) bytes += static_cast<char>(b[i]);
    }
    write_bytes(dir + "/be.npy", bytes);
    const auto t = dslens::read_npy(dir + "/be.npy");
    EXPECT_TRUE(torch::equal(t, torch::tensor({1.5, -2.0}, torch::kFloat64)));
  }
  // An old-style header without the growth padding, with a Python-2 long 'L' suffix.
  {
    std::string bytes = header_v1("{'descr': '<i4', 'fortran_order': False, 'shape': (3L,), }");
    const int32_t data[3] = {7, -8, 9};
    bytes.append(reinterpret_cast<const char*>(data), sizeof(data));
    write_bytes(dir + "/old.npy", bytes);
    const auto t = dslens::read_npy(dir + "/old.npy");
    EXPECT_TRUE(torch::equal(t, torch::tensor({7, -8, 9}, torch::kInt32)));
  }
}

TEST(Npy, MalformedFilesNameTheFile) {
  const auto dir = dslens::testing::temp_dir("npy_bad");
  auto expect_file_error = [](const std::string& path, const std::string& fragment) {
    try {
      dslens::read_npy(path);
      ADD_FAILURE() << "no error for " << path;
    } catch (const dslens::FileError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path), std::string::npos) << what;
      EXPECT_NE(what.find(fragment), std::string::npos) << what;
    }
  };
  expect_file_error(dir + "/missing.npy", "does not exist");
  write_bytes(dir + "/text.npy", "hello, this is not numpy");
  expect_file_error(dir + "/text.npy", "bad magic");
  {
    std::string bytes = header_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }");
    bytes += std::string(3 * 8, '\0');
    write_bytes(dir + "/short.npy", bytes);
    expect_file_error(dir + "/short.npy", "truncated");
  }
  {
    std::string bytes = header_v1("{'descr': '<U7', 'fortran_order': False, 'shape': (1,), }");
    bytes += std::string(28, '\0');
    write_bytes(dir + "/str.npy", bytes);
    expect_file_error(dir + "/str.npy", "unsupported dtype");
  }
  {
    std::string bytes = header_v1("{'descr': '<f8', 'shape': (1,), }");
    bytes += std::string(8, '\0');
    write_bytes(dir + "/nokey.npy", bytes);
    expect_file_error(dir + "/nokey.npy", "fortran_order");
  }
  EXPECT_THROW(dslens::write_npy(dir + "/b.npy", torch::zeros({2}, torch::kBFloat16)),
               dslens::InvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(dir + "/b.npy"));
}

}  // namespace npy_test
