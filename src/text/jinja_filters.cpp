// jinja_filters.cpp: jinja2's built-in filters that chat templates use, and transformers' own
// tojson (json.dumps with ensure_ascii=False).
#include <algorithm>
#include <cmath>

#include "text/jinja_builtins.h"

namespace dsmoe::text::jinja {
namespace {

Value json_list(const std::vector<Value>& items) {
  Json out = Json::array();
  for (const Value& item : items) {
    DSMOE_CHECK(item.is_data(), "a list can only hold plain data, not {}", type_name(item));
    out.push_back(item.data());
  }
  return Value::of(out);
}

// Attribute lookup with jinja2's dotted paths ("function.name") and integer parts.
Value attribute_path(const Value& item, const std::string& path) {
  Value value = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    // An index within 64 bits; a longer run of digits names an attribute (that none has).
    const bool digits =
        !part.empty() && part.size() <= 18 && std::all_of(part.begin(), part.end(), ::isdigit);
    value = digits ? get_item(value, Value::of(std::stoll(part))) : get_attr(value, part);
    if (dot == std::string::npos) return value;
    start = dot + 1;
  }
}

Value tojson(const Value& input, const Args& args, const Kwargs& kwargs) {
  DSMOE_CHECK(input.is_data(), "Object of type {} is not JSON serializable", type_name(input));
  DumpOptions options;
  if (const Value* ensure_ascii = find_arg(args, kwargs, 0, "ensure_ascii"))
    options.ensure_ascii = truthy(*ensure_ascii);
  const Value* indent = find_arg(args, kwargs, 1, "indent");
  if (indent && !indent->is_none()) {
    if (indent->is_string()) {
      options.indent = indent->data().get<std::string>();
    } else {
      DSMOE_CHECK(indent->is_data() && indent->data().is_number_integer(),
                  "tojson indent must be an integer or a string");
      options.indent = std::string(std::max<int64_t>(0, indent->data().get<int64_t>()), ' ');
    }
    options.item_separator = ",";
  }
  const Value* separators = find_arg(args, kwargs, 2, "separators");
  if (separators && !separators->is_none()) {
    const Json& pair = separators->data();
    DSMOE_CHECK(separators->is_data() && pair.is_array() && pair.size() == 2 &&
                    pair[0].is_string() && pair[1].is_string(),
                "tojson separators must be two strings");
    options.item_separator = pair[0].get<std::string>();
    options.key_separator = pair[1].get<std::string>();
  }
  if (const Value* sort_keys = find_arg(args, kwargs, 3, "sort_keys"))
    options.sort_keys = truthy(*sort_keys);
  return Value::of(py_json_dumps(input.data(), options));
}

// select / reject / selectattr / rejectattr.
Value select(const std::string& name, const Value& input, const Args& args) {
  const bool by_attribute = name == "selectattr" || name == "rejectattr";
  const bool keep = name == "select" || name == "selectattr";
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    DSMOE_CHECK(!args.empty() && args[0].is_string(), "{} needs an attribute name", name);
    attribute = args[next++].data().get<std::string>();
  }
  std::string test;
  if (next < args.size()) {
    DSMOE_CHECK(args[next].is_string(), "{} needs a test name", name);
    test = args[next++].data().get<std::string>();
  }
  const Args test_args(args.begin() + next, args.end());
  std::vector<Value> kept;
  for (const Value& item : iterate(input)) {
    const Value value = by_attribute ? attribute_path(item, attribute) : item;
    const bool passes = test.empty() ? truthy(value) : call_test(test, value, test_args);
    if (passes == keep) kept.push_back(item);
  }
  return json_list(kept);
}

Value map(const Value& input, const Args& args, const Kwargs& kwargs) {
  std::vector<Value> out;
  if (const Value* attribute = find_arg({}, kwargs, 0, "attribute")) {
    const std::string& path = attribute->data().get_ref<const std::string&>();
    const Value* fallback = find_arg({}, kwargs, 0, "default");
    for (const Value& item : iterate(input)) {
      Value value = attribute_path(item, path);
      out.push_back(value.is_undefined() && fallback ? *fallback : value);
    }
    return json_list(out);
  }
  DSMOE_CHECK(!args.empty() && args[0].is_string(), "map needs a filter name or attribute=");
  const Args filter_args(args.begin() + 1, args.end());
  for (const Value& item : iterate(input))
    out.push_back(call_filter(args[0].data().get<std::string>(), item, filter_args, kwargs));
  return json_list(out);
}

// sort(reverse=False, case_sensitive=False, attribute=None) and dictsort.
std::vector<Value> sorted(std::vector<Value> items, bool case_sensitive,
                          const std::string& attribute, bool reverse) {
  const auto key = [&](const Value& item) {
    Value value = attribute.empty() ? item : attribute_path(item, attribute);
    if (!case_sensitive && value.is_string())
      value = Value::of(to_lower(value.data().get<std::string>()));
    return value;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    return reverse ? py_less(key(b), key(a)) : py_less(key(a), key(b));
  });
  return items;
}

std::string indent(const std::string& s, const Value* width, bool first, bool blank) {
  std::string indentation = "    ";
  if (width && width->is_string())
    indentation = width->data().get<std::string>();
  else if (width && width->is_number())
    indentation = std::string(width->data().get<int64_t>(), ' ');
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t nl; (nl = s.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(s.substr(start, nl - start));
  lines.push_back(s.substr(start));  // s + "\n" splits into the same lines (jinja2's quirk)
  std::string out = lines[0];
  for (size_t i = 1; i < lines.size(); ++i)
    out += "\n" + ((blank || !lines[i].empty()) ? indentation : "") + lines[i];
  return first ? indentation + out : out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Whether a double converts to int64_t (truncating) without overflow.
bool fits_int64(double v) {
  constexpr double kInt64Limit = 9223372036854775808.0;  // 2^63
  return std::isfinite(v) && std::fabs(v) < kInt64Limit;
}

// int and float filters: numbers convert; strings parse as Python's int()/float() do (with
// jinja2's fallback of "42.23" | int == 42); anything else gives the default.
Value number_filter(const Value& input, const Value* fallback, bool integer) {
  const Value default_value = fallback ? *fallback : Value::of(integer ? Json(0) : Json(0.0));
  if (input.is_number() || (input.is_data() && input.data().is_boolean())) {
    if (integer && input.data().is_number_integer()) return input;
    const double v =
        input.data().is_boolean() ? input.data().get<bool>() : input.data().get<double>();
    if (integer && !fits_int64(v)) return default_value;  // Python's ints have no bound; ours do
    return integer ? Value::of(static_cast<int64_t>(v)) : Value::of(v);
  }
  if (!input.is_string()) return default_value;
  const std::string& raw = input.data().get_ref<const std::string&>();
  const size_t begin = raw.size() - lstrip_size(raw);
  const std::string s = raw.substr(begin, rstrip_size(raw) - begin);
  try {
    size_t used = 0;
    if (integer) {
      const int64_t v = std::stoll(s, &used);
      if (used == s.size()) return Value::of(v);
    }
    const double v = std::stod(s, &used);
    if (used == s.size() && !s.empty() && (!integer || fits_int64(v)))
      return integer ? Value::of(static_cast<int64_t>(v)) : Value::of(v);
  } catch (const std::exception&) {
  }
  return default_value;
}

}  // namespace

Value call_filter(const std::string& name, const Value& input, const Args& args,
                  const Kwargs& kwargs) {
  if (name == "default" || name == "d") {
    const Value* boolean = find_arg(args, kwargs, 1, "boolean");
    const bool use_default =
        input.is_undefined() || (boolean && truthy(*boolean) && !truthy(input));
    const Value* fallback = find_arg(args, kwargs, 0, "default_value");
    return use_default ? (fallback ? *fallback : Value::of("")) : input;
  }
  if (name == "length" || name == "count") return Value::of(length(input));
  if (name == "string") return Value::of(to_str(input));
  if (name == "tojson") return tojson(input, args, kwargs);
  if (name == "safe") return input;
  if (name == "e" || name == "escape") return Value::of(html_escape(to_str(input)));
  if (name == "trim") {
    Value result;
    const Value* chars = find_arg(args, kwargs, 0, "chars");
    call_method(Value::of(to_str(input)), "strip", chars ? Args{*chars} : Args{}, {}, &result);
    return result;
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    Value result;
    call_method(Value::of(to_str(input)), name, {}, {}, &result);
    return result;
  }
  if (name == "replace") {
    Value result;
    call_method(Value::of(to_str(input)), "replace", args, kwargs, &result);
    return result;
  }
  if (name == "first" || name == "last") {
    const std::vector<Value> items = iterate(input);
    if (items.empty())
      return Value::undefined(fmt::format("No {} item, sequence was empty.", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const Value* separator = find_arg(args, kwargs, 0, "d");
    const Value* attribute = find_arg(args, kwargs, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(input)) {
      if (!first) out += separator ? to_str(*separator) : "";
      out += to_str(attribute ? attribute_path(item, to_str(*attribute)) : item);
      first = false;
    }
    return Value::of(out);
  }
  if (name == "list") return json_list(iterate(input));
  if (name == "items") {
    if (input.is_undefined()) return Value::of(Json::array());
    Value result;
    DSMOE_CHECK(call_method(input, "items", {}, {}, &result),
                "items filter needs a mapping, not {}", type_name(input));
    return result;
  }
  if (name == "reverse") {
    if (input.is_string()) {
      std::vector<std::string> cps = code_points(input.data().get<std::string>());
      std::string out;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
      return Value::of(out);
    }
    std::vector<Value> items = iterate(input);
    std::reverse(items.begin(), items.end());
    return json_list(items);
  }
  if (name == "sort" || name == "dictsort") {
    const Value* reverse = find_arg(args, kwargs, name == "sort" ? 0 : 2, "reverse");
    const Value* case_sensitive = find_arg(args, kwargs, name == "sort" ? 1 : 0, "case_sensitive");
    const Value* attribute = find_arg(args, kwargs, 2, "attribute");
    const bool sensitive = case_sensitive && truthy(*case_sensitive);
    if (name == "dictsort") {
      Value pairs = call_filter("items", input, {}, {});
      return json_list(sorted(iterate(pairs), sensitive, "0", reverse && truthy(*reverse)));
    }
    return json_list(sorted(iterate(input), sensitive,
                            attribute && !attribute->is_none() ? to_str(*attribute) : "",
                            reverse && truthy(*reverse)));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
    return select(name, input, args);
  if (name == "map") return map(input, args, kwargs);
  if (name == "int" || name == "float")
    return number_filter(input, find_arg(args, kwargs, 0, "default"), name == "int");
  if (name == "abs") {
    require_defined(input);
    DSMOE_CHECK(input.is_number() || (input.is_data() && input.data().is_boolean()),
                "bad operand type for abs(): '{}'", type_name(input));
    if (input.data().is_boolean()) return Value::of(input.data().get<bool>() ? 1 : 0);
    return py_less(input, Value::of(0)) ? negate(input) : input;
  }
  if (name == "indent") {
    const Value* first = find_arg(args, kwargs, 1, "first");
    const Value* blank = find_arg(args, kwargs, 2, "blank");
    return Value::of(indent(to_str(input), find_arg(args, kwargs, 0, "width"),
                            first && truthy(*first), blank && truthy(*blank)));
  }
  fail(fmt::format("no filter named '{}'", name));
}

}  // namespace dsmoe::text::jinja
