// jinja_value.h: the values a chat template computes with (JSON data, undefined, namespaces,
// macros, global functions) and their Python semantics as jinja2 sees them: truth, equality,
// ordering, str(), repr(), json.dumps, attribute and item lookup, arithmetic.
#pragma once
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "util/check.h"

namespace dsmoe::text::jinja {

// Insertion-ordered JSON, so that dicts keep their key order as Python dicts do (tojson, items()).
using Json = nlohmann::ordered_json;

struct Namespace;
struct Macro;

struct Value {
  enum class Kind { kUndefined, kData, kNamespace, kMacro, kBuiltin };
  Kind kind = Kind::kUndefined;
  // kData: shared and immutable, so that copies of a Value (lookups, loop items, attributes) are
  // cheap; an attribute or item of a value points into its parent and keeps the parent alive.
  std::shared_ptr<const Json> json;
  std::shared_ptr<Namespace> ns;       // kNamespace: shared, so `ns.x = ...` is seen everywhere
  std::shared_ptr<const Macro> macro;  // kMacro
  // kUndefined: the message jinja2 gives when the undefined value is used ("'x' is undefined");
  // kBuiltin: the global function's name (namespace, range, raise_exception, ...).
  std::string name;

  static Value undefined(std::string message) {
    Value v;
    v.name = std::move(message);
    return v;
  }
  static Value of(Json value) {
    Value v;
    v.kind = Kind::kData;
    v.json = std::make_shared<const Json>(std::move(value));
    return v;
  }
  // A part of `parent`'s data (an attribute, an item), sharing its ownership.
  static Value part_of(const Value& parent, const Json& part) {
    Value v;
    v.kind = Kind::kData;
    v.json = std::shared_ptr<const Json>(parent.json, &part);
    return v;
  }
  const Json& data() const {
    static const Json kNull;
    return json ? *json : kNull;
  }
  static Value builtin(std::string function) {
    Value v;
    v.kind = Kind::kBuiltin;
    v.name = std::move(function);
    return v;
  }
  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_data() const { return kind == Kind::kData; }
  bool is_string() const { return is_data() && data().is_string(); }
  bool is_number() const { return is_data() && data().is_number(); }
  bool is_none() const { return is_data() && data().is_null(); }
};

// The object of jinja2's namespace(): attributes assignable with `{% set ns.x = ... %}`.
struct Namespace {
  std::map<std::string, Value> attributes;
};

// Thrown by raise_exception(): its message is the template's own, shown to the user as is.
class TemplateException : public Error {
 public:
  using Error::Error;
};

// Python's type name of a value, for error messages ("str", "int", "NoneType", ...).
std::string type_name(const Value& value);
// Throws jinja2's UndefinedError when `value` is undefined (an undefined value was used where a
// real one is needed: arithmetic, attribute of undefined, ...).
void require_defined(const Value& value);

bool truthy(const Value& value);
// Python str(): strings as they are, None/True/False, floats as repr(), lists and dicts as repr().
std::string to_str(const Value& value);
std::string py_repr(const Json& json);
std::string py_float_repr(double value);
bool py_equal(const Value& a, const Value& b);
// Python's a < b for numbers, strings and lists; a TypeError otherwise.
bool py_less(const Value& a, const Value& b);

struct DumpOptions {
  std::optional<std::string> indent;  // json.dumps indent (a number is that many spaces)
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
// Python json.dumps with the given options (transformers' tojson filter).
std::string py_json_dumps(const Json& json, const DumpOptions& options);

// jinja2's getattr / getitem on JSON data, namespaces and undefined.
Value get_attr(const Value& object, const std::string& name);
Value get_item(const Value& object, const Value& key);
Value slice(const Value& object, const std::optional<int64_t>& start,
            const std::optional<int64_t>& stop, const std::optional<int64_t>& step);

// Binary operators + - * / // % ** and ~ (concatenation of str() values).
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value negate(const Value& value);
// Python's `a in b`.
bool contains(const Value& container, const Value& item);
// The items a for loop visits: list elements, dict keys, string characters; none for undefined.
std::vector<Value> iterate(const Value& value);
// len(): code points of a string, elements of a list, keys of a dict.
int64_t length(const Value& value);

// Python whitespace (str.isspace) and the code points of a UTF-8 string.
bool is_py_space(int32_t code_point);
std::vector<std::string> code_points(std::string_view s);
// Length of s without its trailing (rstrip) or leading (lstrip) Python whitespace.
size_t rstrip_size(std::string_view s);
size_t lstrip_size(std::string_view s);

}  // namespace dsmoe::text::jinja
