#include <iostream>
#include <torch/script.h>
#include "tensorio.h"
#include "torch_tensors.h"

static void flatten(const c10::IValue& value, std::vector<RawTensor>& out) {
  if (value.isTensor()) {
    out.push_back(from_torch(value.toTensor()));
  } else if (value.isTuple()) {
    for (const auto& item : value.toTupleRef().elements()) flatten(item, out);
  } else if (value.isList()) {
    for (const auto& item : value.toListRef()) flatten(item, out);
  } else if (value.isGenericDict()) {
    for (const auto& item : value.toGenericDict()) flatten(item.value(), out);
  } else {
    throw std::runtime_error("output of type " + value.tagKind() + " is not a tensor");
  }
}

int main(int argc, char** argv) {
  if (argc < 5 || argc % 2 != 1) {
    std::cerr << "usage: " << argv[0] << " MODEL.ts DEVICE IN.bgt OUT.bgt [IN OUT]...\n";
    return 64;
  }
  try {
    c10::Device device(argv[2]);
    c10::InferenceMode guard;
    torch::jit::Module module = torch::jit::load(argv[1], device);
    module.eval();
    for (int i = 3; i < argc; i += 2) {
      std::vector<c10::IValue> args;
      for (const auto& raw : read_tensors(argv[i])) args.emplace_back(to_torch(raw, device));
      std::vector<RawTensor> outputs;
      flatten(module.forward(args), outputs);
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
