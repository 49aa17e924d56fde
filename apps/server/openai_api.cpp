#include "apps/server/openai_api.h"

#include <fmt/format.h>

#include <limits>
#include <optional>
#include <random>

namespace dsmoe::server {
namespace {

using json = nlohmann::json;

constexpr int kMaxJsonDepth = 32;                     // deeper bodies are refused before parsing
constexpr size_t kMaxStopStrings = 16;                // OpenAI allows 4; vLLM any number
constexpr double kMaxTemperature = 2.0;               // OpenAI's range
constexpr int64_t kCompletionsDefaultMaxTokens = 16;  // OpenAI's default for /v1/completions

[[noreturn]] void bad_request(const std::string& param, const std::string& message,
                              const std::string& code = "") {
  throw ApiError{400, message, "invalid_request_error", param, code};
}

// Nesting depth of a JSON text, counted outside strings (the parser recurses per level).
int json_depth(std::string_view body) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return deepest;
}

const char* type_name(const json& value) { return value.type_name(); }

// A field that is absent or null gives nullopt; a present one must have the right type.
std::optional<int64_t> get_integer(const json& body, const char* key, int64_t min, int64_t max) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& value = body[key];
  if (!value.is_number_integer())
    bad_request(key, fmt::format("'{}' must be an integer, got {}", key, type_name(value)));
  if (value.is_number_unsigned() &&
      value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    bad_request(key, fmt::format("'{}' must be at most {}, got {}", key, max, value.dump()));
  const int64_t number = value.get<int64_t>();
  if (number < min || number > max)
    bad_request(key, fmt::format("'{}' must be in [{}, {}], got {}", key, min, max, number));
  return number;
}

std::optional<double> get_number(const json& body, const char* key, double min, double max) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& value = body[key];
  if (!value.is_number())
    bad_request(key, fmt::format("'{}' must be a number, got {}", key, type_name(value)));
  const double number = value.get<double>();
  if (!(number >= min && number <= max))
    bad_request(key, fmt::format("'{}' must be in [{}, {}], got {}", key, min, max, number));
  return number;
}

bool get_bool(const json& body, const char* key, bool fallback) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  if (!body[key].is_boolean())
    bad_request(key, fmt::format("'{}' must be a boolean, got {}", key, type_name(body[key])));
  return body[key].get<bool>();
}

uint64_t random_seed() {
  static std::random_device device;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

std::vector<std::string> parse_stop(const json& body) {
  if (!body.contains("stop") || body["stop"].is_null()) return {};
  const json& stop = body["stop"];
  std::vector<std::string> stops;
  if (stop.is_string()) {
    stops.push_back(stop.get<std::string>());
  } else if (stop.is_array() && stop.size() <= kMaxStopStrings) {
    for (const json& item : stop) {
      if (!item.is_string()) bad_request("stop", "'stop' must be a string or a list of strings");
      stops.push_back(item.get<std::string>());
    }
  } else {
    bad_request("stop", fmt::format("'stop' must be a string or a list of at most {} strings",
                                    kMaxStopStrings));
  }
  for (const std::string& s : stops)
    if (s.empty()) bad_request("stop", "'stop' strings must not be empty");
  return stops;
}

// Options that would change the answer in ways this server does not implement.
void refuse_unsupported(const json& body) {
  if (auto n = get_integer(body, "n", 1, 1); n && *n != 1) bad_request("n", "only n = 1");
  if (auto best_of = get_integer(body, "best_of", 1, 1); best_of && *best_of != 1)
    bad_request("best_of", "only best_of = 1");
  if (get_bool(body, "echo", false)) bad_request("echo", "'echo' is not supported");
  if (body.contains("logprobs") && !body["logprobs"].is_null() && body["logprobs"] != false &&
      body["logprobs"] != 0)
    bad_request("logprobs", "'logprobs' is not supported");
  for (const char* penalty : {"frequency_penalty", "presence_penalty"})
    if (auto value = get_number(body, penalty, -2.0, 2.0); value && *value != 0.0)
      bad_request(penalty, fmt::format("'{}' is not supported (only 0)", penalty));
}

// /v1/completions: "prompt" is a string, a list of token ids, or a list of one of either.
std::vector<int64_t> completion_prompt(const json& body, const ApiLimits& limits,
                                       const TextCodec& codec) {
  if (!body.contains("prompt")) bad_request("prompt", "'prompt' is required");
  json prompt = body["prompt"];
  if (prompt.is_array() && prompt.size() == 1 && (prompt[0].is_string() || prompt[0].is_array()))
    prompt = json(prompt[0]);  // a batch of one
  if (prompt.is_string()) return codec.encode(prompt.get<std::string>());
  if (!prompt.is_array())
    bad_request("prompt", fmt::format("'prompt' must be a string or a list of token ids, got {}",
                                      type_name(prompt)));
  std::vector<int64_t> ids;
  for (const json& id : prompt) {
    if (!id.is_number_integer())
      bad_request("prompt", "'prompt' must be a string or a list of token ids (one prompt only)");
    const int64_t value =
        id.is_number_unsigned() && id.get<uint64_t>() > (1ull << 62) ? -1 : id.get<int64_t>();
    if (value < 0 || value >= limits.vocab_size)
      bad_request("prompt", fmt::format("token id {} is outside the vocabulary [0, {})", id.dump(),
                                        limits.vocab_size));
    ids.push_back(value);
  }
  return ids;
}

// A message's content: a string, null, or a list of {"type": "text", "text": ...} parts.
std::string message_content(const json& message, size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  if (!message.contains("content") || message["content"].is_null()) return "";
  const json& content = message["content"];
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    bad_request(param, fmt::format("'{}' must be a string or a list of parts", param));
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad_request(param, fmt::format("'{}': only text parts are supported", param));
    text += part["text"].get<std::string>();
  }
  return text;
}

// /v1/chat/completions: "messages" rendered by the codec's chat template.
std::vector<int64_t> chat_prompt(const json& body, const TextCodec& codec) {
  if (!body.contains("messages")) bad_request("messages", "'messages' is required");
  const json& messages = body["messages"];
  if (!messages.is_array() || messages.empty())
    bad_request("messages", "'messages' must be a non-empty list of messages");
  json normalized = json::array();
  for (size_t i = 0; i < messages.size(); i++) {
    const json& message = messages[i];
    const std::string param = fmt::format("messages[{}]", i);
    if (!message.is_object()) bad_request(param, fmt::format("'{}' must be an object", param));
    const json role = message.value("role", json());
    if (!role.is_string() || (role != "system" && role != "user" && role != "assistant" &&
                              role != "tool" && role != "developer"))
      bad_request(param + ".role", fmt::format("'{}.role' must be one of system, developer, "
                                               "user, assistant, tool",
                                               param));
    normalized.push_back({{"role", role}, {"content", message_content(message, i)}});
  }
  return codec.encode(codec.render_chat(normalized, true));
}

}  // namespace

json error_body(const ApiError& error) {
  const auto or_null = [](const std::string& s) { return s.empty() ? json() : json(s); };
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", or_null(error.param)},
            {"code", or_null(error.code)}}}};
}

ApiRequest parse_request(Endpoint endpoint, std::string_view body_text, const ApiLimits& limits,
                         const TextCodec& codec) {
  if (json_depth(body_text) > kMaxJsonDepth)
    bad_request("", fmt::format("the body nests deeper than {} levels", kMaxJsonDepth));
  const json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) bad_request("", "the body is not valid JSON (UTF-8)");
  if (!body.is_object()) bad_request("", "the body must be a JSON object");
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) bad_request("model", "'model' must be a string");
    if (body["model"] != limits.model_name)
      throw ApiError{404,
                     fmt::format("The model '{}' does not exist; this server serves '{}'",
                                 body["model"].get<std::string>(), limits.model_name),
                     "invalid_request_error", "model", "model_not_found"};
  }
  refuse_unsupported(body);
  ApiRequest request;
  request.endpoint = endpoint;
  request.stream = get_bool(body, "stream", false);
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    if (!body["stream_options"].is_object())
      bad_request("stream_options", "'stream_options' must be an object");
    request.include_usage = get_bool(body["stream_options"], "include_usage", false);
  }
  GenerationRequest& generation = request.generation;
  SamplingParams& sampling = generation.sampling;
  sampling.temperature = static_cast<float>(
      get_number(body, "temperature", 0.0, kMaxTemperature).value_or(1.0));  // OpenAI's default
  sampling.top_p = static_cast<float>(get_number(body, "top_p", 0.0, 1.0).value_or(1.0));
  if (sampling.top_p <= 0.0f) bad_request("top_p", "'top_p' must be in (0, 1]");
  sampling.top_k = std::max<int64_t>(
      0, get_integer(body, "top_k", -1, std::numeric_limits<int64_t>::max()).value_or(0));
  const auto seed = get_integer(body, "seed", std::numeric_limits<int64_t>::min(),
                                std::numeric_limits<int64_t>::max());
  sampling.seed = seed ? static_cast<uint64_t>(*seed) : random_seed();
  generation.stop = parse_stop(body);
  generation.ignore_eos = get_bool(body, "ignore_eos", false);  // vLLM's extension

  std::optional<int64_t> max_tokens = get_integer(body, "max_tokens", 1, limits.ctx_size);
  if (!max_tokens) max_tokens = get_integer(body, "max_completion_tokens", 1, limits.ctx_size);
  generation.prompt = endpoint == Endpoint::kCompletions ? completion_prompt(body, limits, codec)
                                                         : chat_prompt(body, codec);
  const int64_t n_prompt = static_cast<int64_t>(generation.prompt.size());
  const char* prompt_param = endpoint == Endpoint::kCompletions ? "prompt" : "messages";
  if (n_prompt == 0) bad_request(prompt_param, "the prompt is empty");
  const int64_t room = limits.ctx_size - n_prompt;
  if (room < 1 || (max_tokens && *max_tokens > room))
    bad_request(prompt_param,
                fmt::format("This model's maximum context length is {} tokens. However, you "
                            "requested {} tokens ({} in the prompt, {} for the completion). "
                            "Please reduce the prompt or max_tokens.",
                            limits.ctx_size, n_prompt + max_tokens.value_or(1), n_prompt,
                            max_tokens.value_or(1)),
                "context_length_exceeded");
  generation.max_tokens = max_tokens.value_or(
      endpoint == Endpoint::kCompletions ? std::min(kCompletionsDefaultMaxTokens, room) : room);
  return request;
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

json finish_json(FinishReason finish) {
  return finish == FinishReason::kNone ? json() : json(finish_reason_name(finish));
}

json response_base(const ResponseHeader& header, bool chunk) {
  const bool chat = header.endpoint == Endpoint::kChatCompletions;
  return {
      {"id", header.id},
      {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
      {"created", header.created},
      {"model", header.model}};
}

}  // namespace

json completion_json(const ResponseHeader& header, const std::string& text, FinishReason finish,
                     int64_t prompt_tokens, int64_t completion_tokens) {
  json response = response_base(header, false);
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish)}};
  if (header.endpoint == Endpoint::kChatCompletions)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  response["choices"] = json::array({choice});
  response["usage"] = usage_json(prompt_tokens, completion_tokens);
  return response;
}

json chunk_json(const ResponseHeader& header, const std::string& text, FinishReason finish,
                bool first) {
  json response = response_base(header, true);
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish_json(finish)}};
  if (header.endpoint == Endpoint::kChatCompletions) {
    choice["delta"] = json::object();
    if (first) choice["delta"]["role"] = "assistant";
    if (!text.empty() || (first && finish == FinishReason::kNone))
      choice["delta"]["content"] = text;
  } else {
    choice["text"] = text;
  }
  response["choices"] = json::array({choice});
  return response;
}

json usage_chunk_json(const ResponseHeader& header, int64_t prompt_tokens,
                      int64_t completion_tokens) {
  json response = response_base(header, true);
  response["choices"] = json::array();
  response["usage"] = usage_json(prompt_tokens, completion_tokens);
  return response;
}

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& value) { return "data: " + dump(value) + "\n\n"; }

}  // namespace dsmoe::server
