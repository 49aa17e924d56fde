// openai_api.h: the OpenAI API's side of the server: parsing and validating the bodies of
// /v1/completions and /v1/chat/completions into a GenerationRequest, shaping responses and
// stream chunks, and errors in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/scheduler.h"
#include "runtime/text_codec.h"

namespace dsmoe::server {

// Thrown by the parsers; the handler answers with it.
struct ApiError {
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "")
      : status(status),
        message(std::move(message)),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string message;
  std::string type;
  std::string param;  // the offending field; empty: null
  std::string code;   // empty: null
};
nlohmann::json error_body(const ApiError& error);

enum class Endpoint { kCompletions, kChatCompletions };

// What validation needs to know about the served model.
struct ApiLimits {
  std::string model_name;  // the only name /v1/models lists and requests may ask for
  int64_t ctx_size = 0;    // prompt + completion tokens per request
  int64_t vocab_size = 0;
};

// One validated request.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  GenerationRequest generation;
};

// Parses a request body and builds its prompt (encoded text, token ids, or rendered chat
// messages) and limits. Throws ApiError: 400 for malformed JSON, wrong types and values out of
// range (the message names the field), a prompt that does not fit the context (with the
// numbers); 404 for another model's name.
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const ApiLimits& limits,
                         const TextCodec& codec);

// Fixed parts of every response and chunk of one request.
struct ResponseHeader {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;  // cmpl-... / chatcmpl-...
  int64_t created = 0;
  std::string model;
};

nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
// The whole answer of a non-streaming request.
nlohmann::json completion_json(const ResponseHeader& header, const std::string& text,
                               FinishReason finish, int64_t prompt_tokens,
                               int64_t completion_tokens);
// One streamed chunk: new text; finish set on the last one. Chat's first chunk carries the role.
nlohmann::json chunk_json(const ResponseHeader& header, const std::string& text,
                          FinishReason finish, bool first);
// The chunk after the last one when stream_options.include_usage (empty choices).
nlohmann::json usage_chunk_json(const ResponseHeader& header, int64_t prompt_tokens,
                                int64_t completion_tokens);

// json.dump() that never throws (invalid UTF-8 in echoed input becomes U+FFFD).
std::string dump(const nlohmann::json& value);
// One server-sent event: "data: <json>\n\n".
std::string sse_event(const nlohmann::json& value);

}  // namespace dsmoe::server
