// json_util.h: reading the tokenizer's JSON files without copying big members.
#pragma once
#include <nlohmann/json.hpp>

namespace dsmoe::text {

// object[key] by reference, or a null value when object is not an object or has no such key
// (json::value() would copy: the vocabulary of tokenizer.json is megabytes).
inline const nlohmann::json& member(const nlohmann::json& object, const char* key) {
  static const nlohmann::json null_value;
  if (!object.is_object()) return null_value;
  const auto found = object.find(key);
  return found == object.end() ? null_value : *found;
}

}  // namespace dsmoe::text
