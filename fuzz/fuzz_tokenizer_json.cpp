// fuzz_tokenizer_json: tokenizer.json of arbitrary bytes: a Tokenizer that encodes and decodes,
// or an Error naming the file and field.
#include "fuzz/fuzz_util.h"
#include "text/tokenizer.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = (dsmoe::fuzz::scratch_dir() / "tokenizer").string();
  std::filesystem::create_directories(dir);
  dsmoe::fuzz::write_scratch("tokenizer/tokenizer.json", dsmoe::fuzz::as_view(data, size));
  try {
    const dsmoe::text::Tokenizer tokenizer = dsmoe::text::Tokenizer::load(dir);
    const std::vector<int64_t> ids = tokenizer.encode("Hello world 123 你好 <think>\n", true);
    (void)tokenizer.decode(ids);
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
