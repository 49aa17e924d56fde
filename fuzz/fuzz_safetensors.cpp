// fuzz_safetensors: a .safetensors file of arbitrary bytes: the header is validated (or an Error
// thrown), and every tensor it accepts can be read as float32.
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = (dsmoe::fuzz::scratch_dir() / "safetensors").string();
  std::filesystem::create_directories(dir);
  dsmoe::fuzz::write_scratch("safetensors/model.safetensors", dsmoe::fuzz::as_view(data, size));
  try {
    dsmoe::Checkpoint checkpoint(dir);
    for (const std::string& name : checkpoint.names()) {
      const dsmoe::TensorInfo& info = checkpoint.get(name);
      if (info.shape.size() > 0 && dsmoe::dtype_is_float(info.dtype) && info.nbytes < (1 << 20))
        (void)checkpoint.load_f32(name, info.shape);
    }
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
