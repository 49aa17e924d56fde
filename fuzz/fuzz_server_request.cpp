// fuzz_server_request: a request body of arbitrary bytes to /v1/completions or
// /v1/chat/completions (the first byte chooses): a validated request or an ApiError (4xx).
#include "apps/server/openai_api.h"
#include "fuzz/fuzz_util.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const dsmoe::ModelConfig config = [] {
    dsmoe::ModelConfig c;
    c.vocab_size = 300;
    c.eos_token_id = 299;
    return c;
  }();
  static const dsmoe::ByteCodec codec(config);
  dsmoe::server::ApiLimits limits;
  limits.model_name = "dsmoe";
  limits.ctx_size = 256;
  limits.vocab_size = config.vocab_size;
  const auto endpoint = (data[0] & 1) != 0 ? dsmoe::server::Endpoint::kChatCompletions
                                           : dsmoe::server::Endpoint::kCompletions;
  try {
    (void)dsmoe::server::parse_request(endpoint, dsmoe::fuzz::as_view(data + 1, size - 1), limits,
                                       codec);
  } catch (const dsmoe::server::ApiError& error) {
    if (error.status < 400 || error.status >= 500) std::abort();
  }
  return 0;
}
