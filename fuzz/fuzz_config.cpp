// fuzz_config: config.json of arbitrary bytes: a ModelConfig or an Error naming the field.
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_util.h"
#include "model/config.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json json =
      nlohmann::json::parse(dsmoe::fuzz::as_view(data, size), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return 0;
  try {
    (void)dsmoe::parse_model_config(json, "config.json");
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
