// jinja_builtins.cpp: tests, str/dict methods and globals (filters are in jinja_filters.cpp).
#include "text/jinja_builtins.h"

#include <locale.h>

#include <cctype>
#include <clocale>
#include <ctime>
#include <cwctype>
#include <set>

#include "text/jinja_ast.h"
#include "text/utf8.h"

namespace dsmoe::text::jinja {
namespace {

// The range() limit of jinja2's sandbox (MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

const std::string& string_arg(const Value* value, const char* what) {
  DSMOE_CHECK(value && value->is_string(), "{} must be a string, not {}", what,
              value ? type_name(*value) : "nothing");
  return value->data().get_ref<const std::string&>();
}

int64_t int_arg(const Value* value, const char* what) {
  DSMOE_CHECK(value && value->is_data() &&
                  (value->data().is_number_integer() || value->data().is_boolean()),
              "{} must be an integer, not {}", what, value ? type_name(*value) : "nothing");
  return value->data().is_boolean() ? value->data().get<bool>() : value->data().get<int64_t>();
}

// str.strip/lstrip/rstrip: chars given, or Python whitespace.
std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  const std::vector<std::string> cps = code_points(s);
  std::set<std::string> strip_set;
  const bool whitespace = !chars || chars->is_none();
  if (!whitespace)
    for (auto& c : code_points(string_arg(chars, "strip() argument"))) strip_set.insert(c);
  const auto strippable = [&](const std::string& c) {
    if (!whitespace) return strip_set.count(c) > 0;
    size_t pos = 0;
    return is_py_space(next_code_point(c, &pos));
  };
  size_t begin = 0, end = cps.size();
  while (left && begin < end && strippable(cps[begin])) ++begin;
  while (right && end > begin && strippable(cps[end - 1])) --end;
  std::string out;
  for (size_t i = begin; i < end; ++i) out += cps[i];
  return out;
}

Json split(const std::string& s, const Value* sep_arg, int64_t max_split) {
  Json parts = Json::array();
  if (!sep_arg || sep_arg->is_none()) {  // runs of whitespace, ends stripped
    const std::vector<std::string> cps = code_points(s);
    size_t i = 0;
    const auto space = [&](size_t k) {
      size_t pos = 0;
      return is_py_space(next_code_point(cps[k], &pos));
    };
    while (true) {
      while (i < cps.size() && space(i)) ++i;
      if (i == cps.size()) break;
      std::string part;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        for (; i < cps.size(); ++i) part += cps[i];
        parts.push_back(part);  // Python keeps the remainder's trailing whitespace
        break;
      }
      while (i < cps.size() && !space(i)) part += cps[i++];
      parts.push_back(part);
    }
    return parts;
  }
  const std::string& sep = string_arg(sep_arg, "split() separator");
  DSMOE_CHECK(!sep.empty(), "empty separator");
  size_t start = 0;
  while (max_split < 0 || static_cast<int64_t>(parts.size()) < max_split) {
    const size_t found = s.find(sep, start);
    if (found == std::string::npos) break;
    parts.push_back(s.substr(start, found - start));
    start = found + sep.size();
  }
  parts.push_back(s.substr(start));
  return parts;
}

bool affix_matches(const std::string& s, const Value* affix, bool prefix) {
  const auto one = [&](const std::string& a) {
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0
                  : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix && affix->is_data() && affix->data().is_array()) {
    for (const auto& a : affix->data()) {
      DSMOE_CHECK(a.is_string(), "startswith/endswith takes strings");
      if (one(a.get<std::string>())) return true;
    }
    return false;
  }
  return one(string_arg(affix, "startswith/endswith argument"));
}

// Python's str.title(): a cased character after an uncased one is upper-cased, others lowered.
std::string title_case(const std::string& s) {
  std::string out;
  bool previous_cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    const int32_t cp = next_code_point(s, &pos);
    const bool cased = cp >= 0 && is_cased(cp);
    append_utf8(
        out, cp < 0 ? 0xFFFD : (cased ? (previous_cased ? lower_case(cp) : upper_case(cp)) : cp));
    previous_cased = cased;
  }
  return out;
}

std::string replace_all(const std::string& s, const std::string& old_text,
                        const std::string& new_text, int64_t count) {
  std::string out;
  if (old_text.empty()) {  // Python inserts new_text between the code points
    int64_t done = 0;
    for (const auto& c : code_points(s)) {
      if (count < 0 || done++ < count) out += new_text;
      out += c;
    }
    if (count < 0 || done < count) out += new_text;
    return out;
  }
  size_t start = 0;
  for (int64_t done = 0; count < 0 || done < count; ++done) {
    const size_t found = s.find(old_text, start);
    if (found == std::string::npos) break;
    out += s.substr(start, found - start) + new_text;
    start = found + old_text.size();
  }
  return out + s.substr(start);
}

bool string_method(const std::string& s, const std::string& name, const Args& args,
                   const Kwargs& kwargs, Value* result) {
  const Value* a0 = find_arg(args, kwargs, 0, name == "split" ? "sep" : "chars");
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    *result = Value::of(strip(s, a0, name != "rstrip", name != "lstrip"));
  } else if (name == "split") {
    const Value* max_split = find_arg(args, kwargs, 1, "maxsplit");
    *result = Value::of(split(s, a0, max_split ? int_arg(max_split, "maxsplit") : -1));
  } else if (name == "startswith" || name == "endswith") {
    *result =
        Value::of(affix_matches(s, find_arg(args, kwargs, 0, "prefix"), name == "startswith"));
  } else if (name == "upper" || name == "lower") {
    *result = Value::of(name == "upper" ? to_upper(s) : to_lower(s));
  } else if (name == "title") {
    *result = Value::of(title_case(s));
  } else if (name == "capitalize") {
    size_t first = 0;
    if (!s.empty()) next_code_point(s, &first);
    *result = Value::of(to_upper(s.substr(0, first)) + to_lower(s.substr(first)));
  } else if (name == "replace") {
    const Value* count = find_arg(args, kwargs, 2, "count");
    *result =
        Value::of(replace_all(s, string_arg(find_arg(args, kwargs, 0, "old"), "replace() old"),
                              string_arg(find_arg(args, kwargs, 1, "new"), "replace() new"),
                              count ? int_arg(count, "count") : -1));
  } else if (name == "find" || name == "count") {
    const std::string& sub = string_arg(a0, "find/count argument");
    if (name == "find") {
      const size_t found = s.find(sub);
      *result = Value::of(found == std::string::npos
                              ? int64_t{-1}
                              : static_cast<int64_t>(code_points(s.substr(0, found)).size()));
    } else {
      *result = Value::of(static_cast<int64_t>(split(s, a0, -1).size()) - 1);
    }
  } else if (name == "join") {
    DSMOE_CHECK(a0, "join() takes one argument");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(*a0)) {
      out += (first ? "" : s) + string_arg(&item, "join() item");
      first = false;
    }
    *result = Value::of(out);
  } else {
    return false;
  }
  return true;
}

bool dict_method(const Value& object, const std::string& name, const Args& args,
                 const Kwargs& kwargs, Value* result) {
  const Json& dict = object.data();
  if (name == "get") {
    const Value* key = find_arg(args, kwargs, 0, "key");
    const Value* fallback = find_arg(args, kwargs, 1, "default");
    const auto it =
        key && key->is_string() ? dict.find(key->data().get<std::string>()) : dict.end();
    *result = it != dict.end() ? Value::part_of(object, *it)
              : fallback       ? *fallback
                               : Value::of(nullptr);
    return true;
  }
  if (name != "items" && name != "keys" && name != "values") return false;
  Json out = Json::array();
  for (const auto& item : dict.items()) {
    if (name == "items")
      out.push_back(Json::array({item.key(), item.value()}));
    else if (name == "keys")
      out.push_back(item.key());
    else
      out.push_back(item.value());
  }
  *result = Value::of(out);
  return true;
}

}  // namespace

namespace {
// Unicode simple case mapping from the C library's C.UTF-8 locale (ASCII only without it).
locale_t utf8_locale() {
  static const locale_t locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
  return locale;
}

std::string map_case(const std::string& s, bool upper) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const int32_t cp = next_code_point(s, &pos);
    if (cp < 0)
      out.append(s, start, pos - start);
    else
      append_utf8(out, upper ? upper_case(cp) : lower_case(cp));
  }
  return out;
}
}  // namespace

int32_t upper_case(int32_t cp) {
  if (cp < 0x80 || !utf8_locale()) return cp < 0x80 ? std::toupper(cp) : cp;
  return static_cast<int32_t>(towupper_l(static_cast<wint_t>(cp), utf8_locale()));
}

int32_t lower_case(int32_t cp) {
  if (cp < 0x80 || !utf8_locale()) return cp < 0x80 ? std::tolower(cp) : cp;
  return static_cast<int32_t>(towlower_l(static_cast<wint_t>(cp), utf8_locale()));
}

bool is_cased(int32_t cp) { return upper_case(cp) != cp || lower_case(cp) != cp; }

std::string to_upper(const std::string& s) { return map_case(s, true); }
std::string to_lower(const std::string& s) { return map_case(s, false); }

const Value* find_arg(const Args& args, const Kwargs& kwargs, size_t index, const char* name) {
  if (index < args.size()) return &args[index];
  for (const auto& [key, value] : kwargs)
    if (key == name) return &value;
  return nullptr;
}

bool call_test(const std::string& name, const Value& input, const Args& args) {
  const Json& j = input.data();
  const bool data = input.is_data();
  const Value* arg = args.empty() ? nullptr : &args[0];
  if (name == "defined") return !input.is_undefined();
  if (name == "undefined") return input.is_undefined();
  if (name == "none") return input.is_none();
  if (name == "string") return input.is_string();
  if (name == "mapping") return (data && j.is_object()) || input.kind == Value::Kind::kNamespace;
  if (name == "number") return data && (j.is_number() || j.is_boolean());  // bool is an int
  if (name == "integer") return data && j.is_number_integer();
  if (name == "float") return data && j.is_number_float();
  if (name == "boolean") return data && j.is_boolean();
  if (name == "true" || name == "false")
    return data && j.is_boolean() && j.get<bool>() == (name == "true");
  if (name == "sequence") return data && (j.is_array() || j.is_string() || j.is_object());
  if (name == "iterable") return data && (j.is_array() || j.is_string() || j.is_object());
  if (name == "callable")
    return input.kind == Value::Kind::kMacro || input.kind == Value::Kind::kBuiltin;
  if (name == "lower" || name == "upper") {  // str.islower(): cased characters, all lower
    const std::string s = to_str(input);
    const bool has_cased = to_lower(s) != to_upper(s);
    return has_cased && (name == "lower" ? to_lower(s) : to_upper(s)) == s;
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    const int64_t n = int_arg(&input, "the value tested");
    if (name == "divisibleby") return n % int_arg(arg, "divisibleby argument") == 0;
    return (n % 2 != 0) == (name == "odd");
  }
  DSMOE_CHECK(arg, "test '{}' needs an argument", name);
  if (name == "eq" || name == "equalto" || name == "==") return py_equal(input, *arg);
  if (name == "ne" || name == "!=") return !py_equal(input, *arg);
  if (name == "lt" || name == "lessthan" || name == "<") return py_less(input, *arg);
  if (name == "gt" || name == "greaterthan" || name == ">") return py_less(*arg, input);
  if (name == "le" || name == "<=") return !py_less(*arg, input);
  if (name == "ge" || name == ">=") return !py_less(input, *arg);
  if (name == "in") return contains(*arg, input);
  if (name == "sameas") {
    if (input.is_data() && arg->is_data() && (j.is_null() || j.is_boolean()))
      return j == arg->data();
    return input.kind != Value::Kind::kData && py_equal(input, *arg);
  }
  fail(fmt::format("no test named '{}'", name));
}

bool call_method(const Value& object, const std::string& name, const Args& args,
                 const Kwargs& kwargs, Value* result) {
  if (object.is_string())
    return string_method(object.data().get_ref<const std::string&>(), name, args, kwargs, result);
  if (object.is_data() && object.data().is_object())
    return dict_method(object, name, args, kwargs, result);
  return false;
}

bool is_global_function(const std::string& name) {
  return name == "namespace" || name == "range" || name == "dict" || name == "raise_exception" ||
         name == "strftime_now";
}

Value call_global(const std::string& name, const Args& args, const Kwargs& kwargs) {
  if (name == "raise_exception") {
    DSMOE_CHECK(!args.empty(), "raise_exception() takes a message");
    throw TemplateException(to_str(args[0]));
  }
  if (name == "strftime_now") {
    const std::string& format = string_arg(find_arg(args, kwargs, 0, "format"), "strftime_now()");
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    localtime_r(&now, &local);
    char buffer[256];
    const size_t n = std::strftime(buffer, sizeof buffer, format.c_str(), &local);
    return Value::of(std::string(buffer, n));
  }
  if (name == "range") {
    DSMOE_CHECK(!args.empty() && args.size() <= 3, "range() takes 1 to 3 arguments");
    const bool one = args.size() == 1;
    const int64_t start = one ? 0 : int_arg(&args[0], "range() start");
    const int64_t stop = int_arg(&args[one ? 0 : 1], "range() stop");
    const int64_t step = args.size() == 3 ? int_arg(&args[2], "range() step") : 1;
    DSMOE_CHECK(step != 0, "range() arg 3 must not be zero");
    Json out = Json::array();
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      DSMOE_CHECK(out.size() < kMaxRange, "range too big, maximum length is {}", kMaxRange);
      out.push_back(i);
    }
    return Value::of(out);
  }
  // namespace(...) and dict(...): from an optional mapping and keyword arguments.
  std::vector<std::pair<std::string, Value>> entries;
  if (!args.empty()) {
    DSMOE_CHECK(args.size() == 1 && args[0].is_data() && args[0].data().is_object(),
                "{}() takes one mapping and keyword arguments", name);
    for (const auto& item : args[0].data().items())
      entries.emplace_back(item.key(), Value::of(item.value()));
  }
  for (const auto& entry : kwargs) entries.push_back(entry);
  if (name == "namespace") {
    Value ns;
    ns.kind = Value::Kind::kNamespace;
    ns.ns = std::make_shared<Namespace>();
    for (auto& [key, value] : entries) ns.ns->attributes[key] = value;
    return ns;
  }
  DSMOE_CHECK(name == "dict", "'{}' is not callable", name);
  Json out = Json::object();
  for (auto& [key, value] : entries) {
    DSMOE_CHECK(value.is_data(), "dict() values must be plain data, not {}", type_name(value));
    out[key] = value.data();
  }
  return Value::of(out);
}

}  // namespace dsmoe::text::jinja
