#include <iostream>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/container/shape.h>
#include "tensorio.h"

namespace ffi = tvm::ffi;

static DLDataType dl_type(uint32_t code) {
  switch (code) {
    case 0: return DLDataType{kDLFloat, 32, 1};
    case 1: return DLDataType{kDLFloat, 64, 1};
    case 2: return DLDataType{kDLFloat, 16, 1};
    case 3: return DLDataType{kDLBfloat, 16, 1};
    case 4: return DLDataType{kDLInt, 64, 1};
    case 5: return DLDataType{kDLInt, 32, 1};
    case 6: return DLDataType{kDLInt, 8, 1};
    case 7: return DLDataType{kDLUInt, 8, 1};
    case 8: return DLDataType{kDLBool, 8, 1};
  }
  throw std::runtime_error("unknown dtype code " + std::to_string(code));
}

static ffi::Function global(const char* name) {
  auto fn = ffi::Function::GetGlobal(name);
  if (!fn.has_value()) throw std::runtime_error(std::string("the TVM runtime has no ") + name);
  return *fn;
}

static uint32_t code_of(DLDataType t) {
  for (uint32_t c = 0; c <= 8; ++c) {
    DLDataType d = dl_type(c);
    if (d.code == t.code && d.bits == t.bits && d.lanes == t.lanes) return c;
  }
  throw std::runtime_error("output dtype not supported by BGT1");
}

static void flatten(const ffi::Any& value, std::vector<RawTensor>& out) {
  if (auto tensor = value.try_cast<ffi::Tensor>()) {
    static ffi::Function copy_to = global("runtime.TVMTensorCopyToBytes");
    RawTensor raw;
    raw.dtype = code_of(tensor->dtype());
    raw.shape.assign(tensor->shape().begin(), tensor->shape().end());
    raw.data.resize(ffi::GetDataSize(static_cast<size_t>(tensor->numel()), tensor->dtype()));
    copy_to(*tensor, static_cast<void*>(raw.data.data()), static_cast<int64_t>(raw.data.size()));
    out.push_back(std::move(raw));
  } else if (auto items = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const auto& item : *items) flatten(item, out);
  } else {
    throw std::runtime_error("output of type " + value.GetTypeKey() + " is not a tensor");
  }
}

int main(int argc, char** argv) {
  if (argc < 5 || argc % 2 != 1) {
    std::cerr << "usage: " << argv[0] << " MODEL.so DEVICE IN.bgt OUT.bgt [IN OUT]...\n";
    return 64;
  }
  try {
    std::string dev_name = argv[2];
    DLDevice device{dev_name.rfind("cuda", 0) == 0 ? kDLCUDA : kDLCPU, 0};
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    const int pooled = 2;
    if (device.device_type == kDLCPU) {
      vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, pooled);
    } else {  // the CPU runs the shape functions
      vm->GetFunction("vm_initialization").value()(static_cast<int>(device.device_type), 0,
                                                   pooled, static_cast<int>(kDLCPU), 0, pooled);
    }
    ffi::Function alloc = global("runtime.TVMTensorAllocWithScope");
    ffi::Function copy_from = global("runtime.TVMTensorCopyFromBytes");
    ffi::Function main_fn = vm->GetFunction("main").value();
    for (int i = 3; i < argc; i += 2) {
      std::vector<ffi::Any> args;
      for (const auto& raw : read_tensors(argv[i])) {
        ffi::Tensor t = alloc(ffi::Shape(raw.shape), dl_type(raw.dtype), device, nullptr)
                            .cast<ffi::Tensor>();
        copy_from(t, static_cast<void*>(const_cast<char*>(raw.data.data())),
                  static_cast<int64_t>(raw.data.size()));
        args.emplace_back(t);
      }
      std::vector<ffi::AnyView> views(args.begin(), args.end());
      ffi::Any result;
      main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
      std::vector<RawTensor> outputs;
      flatten(result, outputs);
      write_tensors(argv[i + 1], outputs);
      std::cout << argv[i] << ": " << outputs.size() << " outputs\n";
    }
  } catch (const std::exception& exc) {
    std::string what = exc.what();
    std::cerr << "error: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
