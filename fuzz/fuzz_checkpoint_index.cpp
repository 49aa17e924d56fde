// fuzz_checkpoint_index: model.safetensors.index.json of arbitrary bytes beside a valid shard.
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"
#include "util/check.h"

namespace {

// A shard with one F32 tensor "a" [2].
std::string valid_shard() {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string file(8, '\0');
  const uint64_t length = header.size();
  for (int i = 0; i < 8; i++) file[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return file + header + std::string(8, '\0');
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool ready = [] {
    std::filesystem::create_directories(dsmoe::fuzz::scratch_dir() / "index");
    dsmoe::fuzz::write_scratch("index/model-00001-of-00001.safetensors", valid_shard());
    return true;
  }();
  (void)ready;
  dsmoe::fuzz::write_scratch("index/model.safetensors.index.json",
                             dsmoe::fuzz::as_view(data, size));
  try {
    dsmoe::Checkpoint checkpoint((dsmoe::fuzz::scratch_dir() / "index").string());
    for (const std::string& name : checkpoint.names()) (void)checkpoint.get(name);
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
