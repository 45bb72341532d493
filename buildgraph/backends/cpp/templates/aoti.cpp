#include <iostream>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include "tensorio.h"
#include "torch_tensors.h"

int main(int argc, char** argv) {
  if (argc < 5 || argc % 2 != 1) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 DEVICE IN.bgt OUT.bgt [IN OUT]...\n";
    return 64;
  }
  try {
    c10::Device device(argv[2]);
    c10::InferenceMode guard;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    for (int i = 3; i < argc; i += 2) {
      std::vector<at::Tensor> inputs;
      for (const auto& raw : read_tensors(argv[i])) inputs.push_back(to_torch(raw, device));
      std::vector<RawTensor> outputs;
      for (const auto& t : loader.run(inputs)) outputs.push_back(from_torch(t));
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
