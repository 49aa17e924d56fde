// fuzz_tokenizer_encode: DeepSeek-V3's tokenizer on arbitrary bytes: encoding never fails, and
// decoding gives the bytes back (the tokenizer is lossless, valid UTF-8 or not); arbitrary ids
// decode without failing.
#include <cstdlib>
#include <cstring>

#include "fuzz/fuzz_util.h"
#include "text/tokenizer.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsmoe::text::Tokenizer tokenizer =
      dsmoe::text::Tokenizer::load(DSMOE_TEST_DATA "/tokenizer-v3");
  const std::string_view text = dsmoe::fuzz::as_view(data, size);
  const std::vector<int64_t> ids = tokenizer.encode(text, /*add_special_tokens=*/false);
  if (tokenizer.decode(ids) != text) std::abort();  // lossless round trip
  // The same bytes as ids (4 bytes each), in range or not: skipped or decoded, never a crash.
  std::vector<int64_t> raw(size / 4);
  for (size_t i = 0; i < raw.size(); i++) {
    int32_t id;
    std::memcpy(&id, data + 4 * i, 4);
    raw[i] = id;
  }
  (void)tokenizer.decode(raw, /*skip_special_tokens=*/(size & 1) != 0);
  return 0;
}
