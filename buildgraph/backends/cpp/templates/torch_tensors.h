// Torch tensors <-> BGT1 records (see tensorio.h).
#include <ATen/ATen.h>

static const c10::ScalarType kTorchTypes[] = {
    at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong,
    at::kInt,   at::kChar,    at::kByte,   at::kBool};

static at::Tensor to_torch(const RawTensor& raw, const c10::Device& device) {
  if (raw.dtype >= sizeof(kTorchTypes) / sizeof(kTorchTypes[0]))
    throw std::runtime_error("unknown dtype code " + std::to_string(raw.dtype));
  auto cpu = at::empty(raw.shape, at::TensorOptions().dtype(kTorchTypes[raw.dtype]));
  if (static_cast<size_t>(cpu.nbytes()) != raw.data.size())
    throw std::runtime_error("tensor bytes do not match its shape");
  std::memcpy(cpu.data_ptr(), raw.data.data(), raw.data.size());
  return cpu.to(device);
}

static RawTensor from_torch(const at::Tensor& tensor) {
  auto cpu = tensor.detach().to(at::kCPU).contiguous();
  RawTensor raw;
  raw.dtype = 255;
  for (uint32_t i = 0; i < sizeof(kTorchTypes) / sizeof(kTorchTypes[0]); ++i)
    if (kTorchTypes[i] == cpu.scalar_type()) raw.dtype = i;
  if (raw.dtype == 255) throw std::runtime_error("output dtype not supported by BGT1");
  raw.shape.assign(cpu.sizes().begin(), cpu.sizes().end());
  raw.data.resize(cpu.nbytes());
  std::memcpy(raw.data.data(), cpu.data_ptr(), raw.data.size());
  return raw;
}
