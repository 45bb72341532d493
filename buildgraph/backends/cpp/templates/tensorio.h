// Tensors in and out: the BGT1 format buildgraph writes (little-endian).
//   "BGT1", uint32 count, then per tensor: uint32 dtype, uint32 ndim, int64 shape[ndim],
//   uint64 nbytes, the bytes (C order).
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16, 4 int64, 5 int32, 6 int8, 7 uint8, 8 bool
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

struct RawTensor {
  uint32_t dtype = 0;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

static std::vector<RawTensor> read_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[4];
  uint32_t count = 0;
  in.read(magic, 4);
  in.read(reinterpret_cast<char*>(&count), 4);
  if (!in || std::memcmp(magic, "BGT1", 4) != 0) throw std::runtime_error(path + " is not a BGT1 file");
  std::vector<RawTensor> out(count);
  for (auto& t : out) {
    uint32_t ndim = 0;
    uint64_t nbytes = 0;
    in.read(reinterpret_cast<char*>(&t.dtype), 4);
    in.read(reinterpret_cast<char*>(&ndim), 4);
    t.shape.resize(ndim);
    in.read(reinterpret_cast<char*>(t.shape.data()), 8 * ndim);
    in.read(reinterpret_cast<char*>(&nbytes), 8);
    t.data.resize(nbytes);
    in.read(t.data.data(), nbytes);
    if (!in) throw std::runtime_error(path + " is truncated");
  }
  return out;
}

static void write_tensors(const std::string& path, const std::vector<RawTensor>& tensors) {
  std::ofstream out(path, std::ios::binary);
  uint32_t count = static_cast<uint32_t>(tensors.size());
  out.write("BGT1", 4);
  out.write(reinterpret_cast<const char*>(&count), 4);
  for (const auto& t : tensors) {
    uint32_t ndim = static_cast<uint32_t>(t.shape.size());
    uint64_t nbytes = t.data.size();
    out.write(reinterpret_cast<const char*>(&t.dtype), 4);
    out.write(reinterpret_cast<const char*>(&ndim), 4);
    out.write(reinterpret_cast<const char*>(t.shape.data()), 8 * ndim);
    out.write(reinterpret_cast<const char*>(&nbytes), 8);
    out.write(t.data.data(), nbytes);
  }
  if (!out) throw std::runtime_error("cannot write " + path);
}
