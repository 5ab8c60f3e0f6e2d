#include "dslens/core/npy.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <vector>

#include "dslens/core/atomic_file.h"
#include "dslens/core/errors.h"

namespace dslens {
namespace npy_detail {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;
constexpr size_t kGrowthAxisMaxDigits = 21;

bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

struct TypeInfo {
  char kind;  // 'f', 'i', 'u', 'b', 'c'
  int size;   // bytes
  torch::ScalarType dtype;
};

const std::vector<TypeInfo>& type_table() {
  static const std::vector<TypeInfo> table = {
      {'f', 8, torch::kFloat64},      {'f', 4, torch::kFloat32},       {'f', 2, torch::kFloat16},
      {'i', 8, torch::kInt64},        {'i', 4, torch::kInt32},         {'i', 2, torch::kInt16},
      {'i', 1, torch::kInt8},         {'u', 1, torch::kUInt8},         {'b', 1, torch::kBool},
      {'c', 8, torch::kComplexFloat}, {'c', 16, torch::kComplexDouble}};
  return table;
}

[[noreturn]] void bad_file(const std::string& path, const std::string& what) {
  throw FileError("npy file '" + path + "': " + what);
}

// Python's repr of a shape tuple: (), (3,), (2, 3).
std::string shape_repr(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// Value of key `key` in the header dict text, up to the next top-level comma or closing brace.
std::string dict_value(const std::string& path, const std::string& dict, const std::string& key) {
  size_t pos = std::string::npos;
  for (const char quote : {'\'', '"'}) {
    const std::string k = std::string(1, quote) + key + std::string(1, quote);
    pos = dict.find(k);
    if (pos != std::string::npos) {
      pos += k.size();
      break;
    }
  }
  if (pos == std::string::npos) bad_file(path, "header has no '" + key + "' entry");
  pos = dict.find(':', pos);
  if (pos == std::string::npos) bad_file(path, "malformed header entry '" + key + "'");
  ++pos;
  while (pos < dict.size() && std::isspace(static_cast<unsigned char>(dict[pos]))) ++pos;
  size_t end = pos;
  int depth = 0;
  char in_quote = 0;
  for (; end < dict.size(); ++end) {
    const char c = dict[end];
    if (in_quote) {
      if (c == in_quote) in_quote = 0;
      continue;
    }
    if (c == '\'' || c == '"')
      in_quote = c;
    else if (c == '(' || c == '[')
      ++depth;
    else if (c == ')' || c == ']')
      --depth;
    else if ((c == ',' || c == '}') && depth == 0)
      break;
  }
  std::string v = dict.substr(pos, end - pos);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
  return v;
}

Header parse_header(const std::string& path, const std::string& dict) {
  Header h;
  std::string descr = dict_value(path, dict, "descr");
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"') ||
      descr.back() != descr.front()) {
    bad_file(path,
             "unsupported dtype descriptor " + descr + " (structured arrays are not supported)");
  }
  h.descr = descr.substr(1, descr.size() - 2);
  const std::string fo = dict_value(path, dict, "fortran_order");
  if (fo == "True")
    h.fortran_order = true;
  else if (fo == "False")
    h.fortran_order = false;
  else
    bad_file(path, "fortran_order is not True or False: " + fo);
  std::string shape = dict_value(path, dict, "shape");
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') {
    bad_file(path, "shape is not a tuple: " + shape);
  }
  shape = shape.substr(1, shape.size() - 2);
  std::stringstream ss(shape);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(std::remove_if(
                   item.begin(), item.end(),
                   [](char c) { return std::isspace(static_cast<unsigned char>(c)) || c == 'L'; }),
               item.end());
    if (item.empty()) continue;
    try {
      size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v < 0) throw std::invalid_argument(item);
      h.shape.push_back(v);
    } catch (const std::exception&) {
      bad_file(path, "shape has a bad dimension '" + item + "'");
    }
  }
  return h;
}

// Resolves a descriptor ('<f8', '|b1', '=i4', '>f8', 'f8') to a type and whether bytes must be
// swapped.
TypeInfo resolve_descr(const std::string& path, const std::string& descr, bool& swap) {
  std::string d = descr;
  char order = '=';
  if (!d.empty() && (d[0] == '<' || d[0] == '>' || d[0] == '|' || d[0] == '=')) {
    order = d[0];
    d = d.substr(1);
  }
  if (d.size() < 2) bad_file(path, "unsupported dtype '" + descr + "'");
  const char kind = d[0];
  int size = 0;
  try {
    size = std::stoi(d.substr(1));
  } catch (const std::exception&) {
    bad_file(path, "unsupported dtype '" + descr + "'");
  }
  for (const auto& t : type_table()) {
    if (t.kind == kind && t.size == size) {
      const bool little = host_is_little_endian();
      swap = size > 1 && ((order == '<' && !little) || (order == '>' && little));
      return t;
    }
  }
  bad_file(path, "unsupported dtype '" + descr + "'");
}

void byteswap(char* data, int64_t count, const TypeInfo& type) {
  // Complex numbers swap each of their two components.
  const int unit = type.kind == 'c' ? type.size / 2 : type.size;
  const int64_t units = count * (type.size / unit);
  for (int64_t i = 0; i < units; ++i) std::reverse(data + i * unit, data + (i + 1) * unit);
}

}  // namespace npy_detail

std::string npy_descr(torch::ScalarType dtype) {
  for (const auto& t : npy_detail::type_table()) {
    if (t.dtype != dtype) continue;
    const char order = t.size == 1 ? '|' : '<';
    return std::string(1, order) + t.kind + std::to_string(t.size);
  }
  throw InvalidArgument(std::string("npy: cannot store dtype ") + c10::toString(dtype) +
                        " (supported: float64/32/16, int64/32/16/8, uint8, bool, complex64/128)");
}

std::string npy_header(const torch::Tensor& array) {
  if (!npy_detail::host_is_little_endian()) throw Error("npy: big-endian hosts are not supported");
  const auto sizes = array.sizes().vec();
  std::string dict = "{'descr': '" + npy_descr(array.scalar_type()) +
                     "', 'fortran_order': False, 'shape': " + npy_detail::shape_repr(sizes) + ", }";
  // Spare space for growing the first axis in place, as numpy >= 1.24 writes it.
  if (!sizes.empty()) {
    const size_t digits = std::to_string(sizes[0]).size();
    dict += std::string(
        npy_detail::kGrowthAxisMaxDigits > digits ? npy_detail::kGrowthAxisMaxDigits - digits : 0,
        ' ');
  }
  const size_t hlen = dict.size() + 1;  // + '\n'
  const size_t pad =
      npy_detail::kAlign - ((npy_detail::kMagicLen + 2 + 2 + hlen) % npy_detail::kAlign);
  const size_t total = hlen + pad;
  if (total > 65535) throw InvalidArgument("npy: header too long for format 1.0");
  std::string out(npy_detail::kMagic, npy_detail::kMagicLen);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(total & 0xff);
  out += static_cast<char>((total >> 8) & 0xff);
  out += dict;
  out += std::string(pad, ' ');
  out += '\n';
  return out;
}

void write_npy(const std::string& path, const torch::Tensor& array) {
  if (!array.defined())
    throw InvalidArgument("npy: cannot write an undefined tensor to '" + path + "'");
  const std::string header = npy_header(array);
  const auto data = array.detach().to(torch::kCPU).contiguous();
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw FileError("cannot write npy file '" + path + "'");
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(data.data_ptr()),
              static_cast<std::streamsize>(data.numel() * data.element_size()));
    out.close();
    if (!out) throw FileError("cannot write npy file '" + path + "'");
  });
}

torch::Tensor read_npy(const std::string& path) {
  if (!std::filesystem::exists(path)) throw FileError("npy file '" + path + "' does not exist");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError("npy file '" + path + "' cannot be opened");
  char prefix[8];
  if (!in.read(prefix, 8) || std::memcmp(prefix, npy_detail::kMagic, npy_detail::kMagicLen) != 0) {
    npy_detail::bad_file(path, "not a NumPy .npy file (bad magic)");
  }
  const int major = static_cast<unsigned char>(prefix[6]);
  size_t hlen = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) npy_detail::bad_file(path, "truncated header");
    hlen = b[0] | (static_cast<size_t>(b[1]) << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) npy_detail::bad_file(path, "truncated header");
    hlen = b[0] | (static_cast<size_t>(b[1]) << 8) | (static_cast<size_t>(b[2]) << 16) |
           (static_cast<size_t>(b[3]) << 24);
  } else {
    npy_detail::bad_file(path, "unsupported format version " + std::to_string(major));
  }
  if (hlen > (1u << 24))
    npy_detail::bad_file(path, "header length " + std::to_string(hlen) + " is implausible");
  std::string dict(hlen, '\0');
  if (!in.read(dict.data(), static_cast<std::streamsize>(hlen)))
    npy_detail::bad_file(path, "truncated header");
  const auto h = npy_detail::parse_header(path, dict);
  bool swap = false;
  const auto type = npy_detail::resolve_descr(path, h.descr, swap);
  int64_t count = 1;
  for (const auto d : h.shape) count *= d;
  const auto opts = torch::TensorOptions().dtype(type.dtype);
  auto shape = h.shape;
  if (h.fortran_order) std::reverse(shape.begin(), shape.end());
  auto t = torch::empty(shape, opts);
  const auto bytes = static_cast<std::streamsize>(count * type.size);
  if (bytes > 0 && !in.read(static_cast<char*>(t.data_ptr()), bytes)) {
    npy_detail::bad_file(path, "truncated data: expected " + std::to_string(bytes) +
                                   " bytes for shape " + npy_detail::shape_repr(h.shape));
  }
  if (in.peek() != std::char_traits<char>::eof()) {
    npy_detail::bad_file(
        path, "trailing bytes after the data of shape " + npy_detail::shape_repr(h.shape));
  }
  if (swap) npy_detail::byteswap(static_cast<char*>(t.data_ptr()), count, type);
  if (type.dtype == torch::kBool) {
    // numpy booleans are 0/1 bytes; normalise anything else.
    auto* p = static_cast<unsigned char*>(t.data_ptr());
    for (int64_t i = 0; i < count; ++i) p[i] = p[i] ? 1 : 0;
  }
  if (h.fortran_order && t.dim() > 1) {
    std::vector<int64_t> perm(static_cast<size_t>(t.dim()));
    for (int64_t i = 0; i < t.dim(); ++i) perm[i] = t.dim() - 1 - i;
    t = t.permute(perm).contiguous();
  }
  return t;
}

}  // namespace dslens
