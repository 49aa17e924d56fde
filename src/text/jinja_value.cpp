// jinja_value.cpp: see jinja_value.h. Python 3 semantics, as jinja2 evaluates templates.
#include "text/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

#include "text/utf8.h"

namespace dsmoe::text::jinja {
namespace {

bool is_numeric(const Json& j) { return j.is_number() || j.is_boolean(); }
bool is_integral(const Json& j) { return j.is_number_integer() || j.is_boolean(); }
int64_t as_int(const Json& j) {
  return j.is_boolean() ? (j.get<bool>() ? 1 : 0) : j.get<int64_t>();
}
double as_double(const Json& j) {
  return j.is_boolean() ? (j.get<bool>() ? 1.0 : 0.0) : j.get<double>();
}

void append_hex(std::string& out, const char* prefix, int32_t value, int digits) {
  out += prefix;
  out += fmt::format("{:0{}x}", value, digits);
}

// Characters Python's str.isprintable() rejects, for repr(): controls, separators and format
// characters (the common ones; not the whole Unicode table).
bool is_py_unprintable(int32_t cp) {
  if (cp < 0x20 || (cp >= 0x7F && cp <= 0xA0) || cp == 0xAD) return true;
  if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F)) return true;
  if ((cp >= 0x205F && cp <= 0x2064) || cp == 0x3000 || cp == 0xFEFF) return true;
  return false;
}

std::string repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const int32_t cp = next_code_point(s, &pos);
    if (cp == '\\')
      out += "\\\\";
    else if (cp == quote)
      out += std::string("\\") + quote;
    else if (cp == '\n')
      out += "\\n";
    else if (cp == '\r')
      out += "\\r";
    else if (cp == '\t')
      out += "\\t";
    else if (cp < 0)
      append_hex(out, "\\x", static_cast<uint8_t>(s[start]), 2);
    else if (is_py_unprintable(cp))
      append_hex(out, cp < 0x100 ? "\\x" : "\\u", cp, cp < 0x100 ? 2 : 4);
    else
      out.append(s, start, pos - start);
  }
  return out + quote;
}

void dump_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const int32_t cp = next_code_point(s, &pos);
    switch (cp) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (cp >= 0 && cp < 0x20) {
          append_hex(out, "\\u", cp, 4);
        } else if (ensure_ascii && cp >= 0x80) {
          if (cp >= 0x10000) {
            append_hex(out, "\\u", 0xD800 + ((cp - 0x10000) >> 10), 4);
            append_hex(out, "\\u", 0xDC00 + ((cp - 0x10000) & 0x3FF), 4);
          } else {
            append_hex(out, "\\u", cp, 4);
          }
        } else {
          out.append(s, start, pos - start);
        }
    }
  }
  out += '"';
}

void dump(std::string& out, const Json& j, const DumpOptions& options, int depth) {
  if (j.is_string()) return dump_string(out, j.get<std::string>(), options.ensure_ascii);
  if (j.is_null()) return void(out += "null");
  if (j.is_boolean()) return void(out += j.get<bool>() ? "true" : "false");
  if (j.is_number_float()) {
    const double v = j.get<double>();
    if (std::isnan(v)) return void(out += "NaN");
    if (std::isinf(v)) return void(out += v > 0 ? "Infinity" : "-Infinity");
    return void(out += py_float_repr(v));
  }
  if (j.is_number()) return void(out += j.dump());
  const bool is_array = j.is_array();
  if (j.empty()) return void(out += is_array ? "[]" : "{}");
  std::string newline_indent;
  if (options.indent) {
    newline_indent = "\n";
    for (int i = 0; i <= depth; ++i) newline_indent += *options.indent;
  }
  out += is_array ? '[' : '{';
  std::vector<std::string> keys;
  if (!is_array) {
    for (const auto& item : j.items()) keys.push_back(item.key());
    if (options.sort_keys) std::sort(keys.begin(), keys.end());
  }
  const size_t n = j.size();
  for (size_t i = 0; i < n; ++i) {
    out += i == 0 ? newline_indent : options.item_separator + newline_indent;
    if (is_array) {
      dump(out, j[i], options, depth + 1);
    } else {
      dump_string(out, keys[i], options.ensure_ascii);
      out += options.key_separator;
      dump(out, j.at(keys[i]), options, depth + 1);
    }
  }
  if (options.indent) {
    out += "\n";
    for (int i = 0; i < depth; ++i) out += *options.indent;
  }
  out += is_array ? ']' : '}';
}

// Python's floor division and modulo (the result takes the divisor's sign).
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// Python's integers have no bound; ours are 64-bit, and a result beyond them is an error rather
// than undefined behaviour (found by fuzz_chat_template's review).
int64_t checked(bool overflow, int64_t result) {
  DSMOE_CHECK(!overflow, "integer overflow: the result does not fit in 64 bits");
  return result;
}

Json number(double v, bool integral) {
  if (!integral) return Json(v);
  DSMOE_CHECK(std::isfinite(v) && std::fabs(v) < 9223372036854775808.0,  // 2^63
              "integer overflow: the result does not fit in 64 bits");
  return Json(static_cast<int64_t>(v));
}

// The largest string or list `*` may make (Python would run out of memory instead).
constexpr int64_t kMaxRepeatBytes = int64_t{1} << 30;

std::string repeat(const std::string& s, int64_t times) {
  DSMOE_CHECK(times <= 0 || static_cast<int64_t>(s.size()) <= kMaxRepeatBytes / times,
              "repetition result too large");
  std::string out;
  for (int64_t i = 0; i < times; ++i) out += s;
  return out;
}

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a),
                   type_name(b)));
}

}  // namespace

std::string type_name(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kMacro:
      return "Macro";
    case Value::Kind::kBuiltin:
      return "function";
    case Value::Kind::kData:
      break;
  }
  const Json& j = value.data();
  if (j.is_null()) return "NoneType";
  if (j.is_boolean()) return "bool";
  if (j.is_number_integer()) return "int";
  if (j.is_number_float()) return "float";
  if (j.is_string()) return "str";
  if (j.is_array()) return "list";
  return "dict";
}

void require_defined(const Value& value) {
  if (value.is_undefined()) fail(value.name);
}

bool truthy(const Value& value) {
  if (value.kind != Value::Kind::kData) return value.kind != Value::Kind::kUndefined;
  const Json& j = value.data();
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<int64_t>() != 0;
  if (j.is_number_float()) return j.get<double>() != 0.0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  return !j.empty();
}

std::string py_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  const auto result =
      std::to_chars(buffer, buffer + sizeof buffer, std::abs(value), std::chars_format::scientific);
  const std::string text(buffer, result.ptr);
  const size_t e_pos = text.find('e');
  std::string digits = text.substr(0, e_pos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(text.substr(e_pos + 1));
  const int n_digits = static_cast<int>(digits.size());
  std::string out = std::signbit(value) ? "-" : "";
  if (exponent < -4 || exponent >= 16) {  // repr() switches to exponent notation here
    out += digits.substr(0, 1);
    if (n_digits > 1) out += "." + digits.substr(1);
    return out + fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  const int point = exponent + 1;  // digits before the decimal point
  if (point <= 0) return out + "0." + std::string(-point, '0') + digits;
  if (point >= n_digits) return out + digits + std::string(point - n_digits, '0') + ".0";
  return out + digits.substr(0, point) + "." + digits.substr(point);
}

std::string py_repr(const Json& j) {
  if (j.is_string()) return repr_string(j.get<std::string>());
  if (j.is_null()) return "None";
  if (j.is_boolean()) return j.get<bool>() ? "True" : "False";
  if (j.is_number_float()) return py_float_repr(j.get<double>());
  if (j.is_number()) return j.dump();
  std::string out = j.is_array() ? "[" : "{";
  bool first = true;
  for (const auto& item : j.items()) {
    if (!first) out += ", ";
    first = false;
    if (j.is_object()) out += repr_string(item.key()) + ": ";
    out += py_repr(item.value());
  }
  return out + (j.is_array() ? "]" : "}");
}

std::string to_str(const Value& value) {
  switch (value.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNamespace:
      return "<Namespace>";
    case Value::Kind::kMacro:
      return "<Macro>";
    case Value::Kind::kBuiltin:
      return "<function " + value.name + ">";
    case Value::Kind::kData:
      break;
  }
  if (value.data().is_string()) return value.data().get<std::string>();
  return py_repr(value.data());
}

std::string py_json_dumps(const Json& json, const DumpOptions& options) {
  std::string out;
  dump(out, json, options, 0);
  return out;
}

namespace {
bool json_equal(const Json& a, const Json& b) {
  if (is_numeric(a) && is_numeric(b)) {
    if (is_integral(a) && is_integral(b)) return as_int(a) == as_int(b);
    return as_double(a) == as_double(b);
  }
  if (a.type() != b.type()) return false;
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!json_equal(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& item : a.items()) {
      const auto it = b.find(item.key());
      if (it == b.end() || !json_equal(item.value(), *it)) return false;
    }
    return true;
  }
  return a == b;
}
}  // namespace

bool py_equal(const Value& a, const Value& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
      return true;
    case Value::Kind::kNamespace:
      return a.ns == b.ns;
    case Value::Kind::kMacro:
      return a.macro == b.macro;
    case Value::Kind::kBuiltin:
      return a.name == b.name;
    case Value::Kind::kData:
      return json_equal(a.data(), b.data());
  }
  return false;
}

bool py_less(const Value& a, const Value& b) {
  require_defined(a);
  require_defined(b);
  if (a.is_data() && b.is_data()) {
    const Json& x = a.data();
    const Json& y = b.data();
    if (is_numeric(x) && is_numeric(y)) {
      if (is_integral(x) && is_integral(y)) return as_int(x) < as_int(y);
      return as_double(x) < as_double(y);
    }
    // UTF-8 byte order is code point order, which is how Python orders strings.
    if (x.is_string() && y.is_string()) return x.get<std::string>() < y.get<std::string>();
    if (x.is_array() && y.is_array()) {
      for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
        if (!json_equal(x[i], y[i])) return py_less(Value::of(x[i]), Value::of(y[i]));
      }
      return x.size() < y.size();
    }
  }
  fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a),
                   type_name(b)));
}

Value get_attr(const Value& object, const std::string& name) {
  require_defined(object);
  if (object.kind == Value::Kind::kNamespace) {
    const auto it = object.ns->attributes.find(name);
    if (it != object.ns->attributes.end()) return it->second;
    return Value::undefined(fmt::format("'Namespace' object has no attribute '{}'", name));
  }
  if (object.is_data() && object.data().is_object()) {
    const auto it = object.data().find(name);
    if (it != object.data().end()) return Value::part_of(object, *it);
    return Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
  }
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", type_name(object), name));
}

Value get_item(const Value& object, const Value& key) {
  require_defined(object);
  if (key.is_string()) return get_attr(object, key.data().get<std::string>());
  if (object.is_data() && key.is_data() && is_integral(key.data())) {
    int64_t index = as_int(key.data());
    if (object.data().is_array() || object.data().is_string()) {
      const int64_t n = length(object);
      if (index < 0) index += n;
      if (index >= 0 && index < n) {
        if (object.data().is_array()) return Value::part_of(object, object.data()[index]);
        return Value::of(code_points(object.data().get<std::string>())[index]);
      }
    }
  }
  return Value::undefined(
      fmt::format("'{} object' has no element {}", type_name(object), to_str(key)));
}

Value slice(const Value& object, const std::optional<int64_t>& start,
            const std::optional<int64_t>& stop, const std::optional<int64_t>& step_arg) {
  require_defined(object);
  const bool is_string = object.is_string();
  DSMOE_CHECK(is_string || (object.is_data() && object.data().is_array()),
              "'{}' object is not subscriptable", type_name(object));
  const int64_t step = step_arg.value_or(1);
  DSMOE_CHECK(step != 0, "slice step cannot be zero");
  const std::vector<std::string> chars =
      is_string ? code_points(object.data().get<std::string>()) : std::vector<std::string>{};
  const int64_t n = length(object);
  // Python's slice.indices().
  const auto clamp = [&](std::optional<int64_t> index, int64_t fallback) {
    if (!index) return fallback;
    int64_t i = *index < 0 ? *index + n : *index;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t first = clamp(start, step > 0 ? 0 : n - 1);
  const int64_t last = clamp(stop, step > 0 ? n : -1);
  std::string text;
  Json list = Json::array();
  for (int64_t i = first; step > 0 ? i < last : i > last; i += step) {
    if (is_string)
      text += chars[i];
    else
      list.push_back(object.data()[i]);
  }
  return is_string ? Value::of(text) : Value::of(list);
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::of(to_str(a) + to_str(b));
  require_defined(a);
  require_defined(b);
  if (!a.is_data() || !b.is_data()) unsupported(op, a, b);
  const Json& x = a.data();
  const Json& y = b.data();
  if (op == "+") {
    if (x.is_string() && y.is_string())
      return Value::of(x.get<std::string>() + y.get<std::string>());
    if (x.is_array() && y.is_array()) {
      Json out = x;
      for (const auto& item : y) out.push_back(item);
      return Value::of(out);
    }
  }
  if (op == "*") {
    if (x.is_string() && is_integral(y)) return Value::of(repeat(x.get<std::string>(), as_int(y)));
    if (is_integral(x) && y.is_string()) return Value::of(repeat(y.get<std::string>(), as_int(x)));
    if (x.is_array() != y.is_array() && (is_integral(x) || is_integral(y))) {
      const Json& list = x.is_array() ? x : y;
      const int64_t times = as_int(x.is_array() ? y : x);
      DSMOE_CHECK(times <= 0 || static_cast<int64_t>(list.size()) <= kMaxRepeatBytes / times,
                  "repetition result too large");
      Json out = Json::array();
      for (int64_t i = 0, n = as_int(x.is_array() ? y : x); i < n; ++i)
        for (const auto& item : list) out.push_back(item);
      return Value::of(out);
    }
  }
  if (!is_numeric(x) || !is_numeric(y)) {
    if (op == "+" && (x.is_string() || y.is_string()))
      fail(fmt::format("can only concatenate str (not \"{}\") to str",
                       type_name(x.is_string() ? b : a)));
    unsupported(op, a, b);
  }
  const bool integral = is_integral(x) && is_integral(y);
  const double u = as_double(x), v = as_double(y);
  const int64_t i = integral ? as_int(x) : 0, j = integral ? as_int(y) : 0;
  if (op == "+" || op == "-" || op == "*") {
    if (!integral) return Value::of(op == "+" ? u + v : op == "-" ? u - v : u * v);
    int64_t result = 0;
    const bool overflow = op == "+"   ? __builtin_add_overflow(i, j, &result)
                          : op == "-" ? __builtin_sub_overflow(i, j, &result)
                                      : __builtin_mul_overflow(i, j, &result);
    return Value::of(checked(overflow, result));
  }
  if (op == "**") {
    if (integral && as_int(y) >= 0) return Value::of(number(std::pow(u, v), true));
    return Value::of(std::pow(u, v));
  }
  DSMOE_CHECK(v != 0.0, "division by zero");
  if (op == "/") return Value::of(u / v);
  DSMOE_CHECK(!integral || i != INT64_MIN || j != -1,
              "integer overflow: the result does not fit in 64 bits");
  if (op == "//") {
    if (integral) return Value::of(floor_div(as_int(x), as_int(y)));
    return Value::of(std::floor(u / v));
  }
  if (op == "%") {
    if (integral) {  // Python's: the remainder takes the divisor's sign
      const int64_t remainder = i % j;
      return Value::of(remainder != 0 && (remainder < 0) != (j < 0) ? remainder + j : remainder);
    }
    return Value::of(u - std::floor(u / v) * v);
  }
  fail(fmt::format("unknown operator {}", op));
}

Value negate(const Value& value) {
  require_defined(value);
  DSMOE_CHECK(value.is_data() && is_numeric(value.data()), "bad operand type for unary -: '{}'",
              type_name(value));
  if (is_integral(value.data())) {
    const int64_t i = as_int(value.data());
    DSMOE_CHECK(i != INT64_MIN, "integer overflow: the result does not fit in 64 bits");
    return Value::of(-i);
  }
  return Value::of(-value.data().get<double>());
}

bool contains(const Value& container, const Value& item) {
  if (container.is_undefined()) return false;
  if (container.kind == Value::Kind::kNamespace)
    return item.is_string() && container.ns->attributes.count(item.data().get<std::string>()) > 0;
  DSMOE_CHECK(container.is_data(), "argument of type '{}' is not iterable", type_name(container));
  const Json& c = container.data();
  if (c.is_string()) {
    DSMOE_CHECK(item.is_string(), "'in <string>' requires string as left operand, not {}",
                type_name(item));
    return c.get<std::string>().find(item.data().get<std::string>()) != std::string::npos;
  }
  if (c.is_object()) return item.is_string() && c.contains(item.data().get<std::string>());
  DSMOE_CHECK(c.is_array(), "argument of type '{}' is not iterable", type_name(container));
  for (const auto& element : c)
    if (py_equal(Value::part_of(container, element), item)) return true;
  return false;
}

std::vector<Value> iterate(const Value& value) {
  std::vector<Value> items;
  if (value.is_undefined()) return items;
  if (value.kind == Value::Kind::kNamespace) {
    for (const auto& [key, unused] : value.ns->attributes) items.push_back(Value::of(key));
    return items;
  }
  DSMOE_CHECK(value.is_data(), "'{}' object is not iterable", type_name(value));
  const Json& j = value.data();
  if (j.is_string()) {
    for (auto& c : code_points(j.get<std::string>())) items.push_back(Value::of(c));
  } else if (j.is_object()) {
    for (const auto& item : j.items()) items.push_back(Value::of(item.key()));
  } else {
    DSMOE_CHECK(j.is_array(), "'{}' object is not iterable", type_name(value));
    for (const auto& element : j) items.push_back(Value::part_of(value, element));
  }
  return items;
}

int64_t length(const Value& value) {
  if (value.is_undefined()) return 0;
  if (value.kind == Value::Kind::kNamespace) return value.ns->attributes.size();
  DSMOE_CHECK(value.is_data() &&
                  (value.data().is_string() || value.data().is_array() || value.data().is_object()),
              "object of type '{}' has no len()", type_name(value));
  if (value.data().is_string()) return code_points(value.data().get<std::string>()).size();
  return value.data().size();
}

bool is_py_space(int32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::vector<std::string> code_points(std::string_view s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    next_code_point(s, &pos);
    out.emplace_back(s.substr(start, pos - start));
  }
  return out;
}

size_t rstrip_size(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!is_py_space(next_code_point(s, &pos)) || pos != end) break;
    end = start;
  }
  return end;
}

size_t lstrip_size(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!is_py_space(next_code_point(s, &next))) break;
    pos = next;
  }
  return s.size() - pos;
}

}  // namespace dsmoe::text::jinja
