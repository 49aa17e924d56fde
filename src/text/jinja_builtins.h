// jinja_builtins.h: jinja2's filters and tests, the str and dict methods templates call, and
// the globals transformers provides (namespace, range, dict, raise_exception, strftime_now).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "text/jinja_value.h"

namespace dsmoe::text::jinja {

using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;

// The argument at `index`, or the keyword argument `name`, or nullptr.
const Value* find_arg(const Args& args, const Kwargs& kwargs, size_t index, const char* name);

// A filter (`value | name(args)`). An unknown filter throws "no filter named ...".
Value call_filter(const std::string& name, const Value& input, const Args& args,
                  const Kwargs& kwargs);
// A test (`value is name(args)`). An unknown test throws "no test named ...".
bool call_test(const std::string& name, const Value& input, const Args& args);
// A method of a str or dict value (`s.split(',')`, `d.items()`): false when there is none.
bool call_method(const Value& object, const std::string& name, const Args& args,
                 const Kwargs& kwargs, Value* result);
bool is_global_function(const std::string& name);
Value call_global(const std::string& name, const Args& args, const Kwargs& kwargs);

// Unicode simple case mapping (one code point to one: not Python's "ß".upper() == "SS").
int32_t upper_case(int32_t code_point);
int32_t lower_case(int32_t code_point);
bool is_cased(int32_t code_point);
std::string to_upper(const std::string& s);
std::string to_lower(const std::string& s);

}  // namespace dsmoe::text::jinja
