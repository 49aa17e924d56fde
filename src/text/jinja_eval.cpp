// jinja_eval.cpp: see jinja_eval.h.
#include "text/jinja_eval.h"

#include "text/jinja_lexer.h"
#include "text/jinja_scoping.h"

namespace dsmoe::text::jinja {
namespace {

// Nested macro calls allowed (Python's recursion limit stops jinja2 somewhat later).
constexpr int kMaxMacroDepth = 200;

// An error that already names its line:column (inner statements locate errors first).
class LocatedError : public Error {
 public:
  using Error::Error;
};

std::optional<int64_t> slice_bound(const Value& value) {
  if (value.is_undefined() || value.is_none()) return std::nullopt;
  DSMOE_CHECK(value.is_data() && value.data().is_number_integer(),
              "slice indices must be integers or None, not {}", type_name(value));
  return value.data().get<int64_t>();
}

}  // namespace

Interpreter::Interpreter(const Json& context) {
  context_.kind = Value::Kind::kData;
  context_.json = std::shared_ptr<const Json>(&context, [](const Json*) {});
  DSMOE_CHECK(context.is_object(), "chat template context must be a JSON object");
  scopes_.emplace_back();
}

std::string Interpreter::render(const Body& body) {
  late_names_ = names_undefined_until_assigned(body);
  scopes_[0].late = late_names(body);
  return capture(body);
}

const std::set<std::string>* Interpreter::late_names(const Body& body) {
  const auto it = late_names_.find(&body);
  return it == late_names_.end() ? nullptr : &it->second;
}

std::string Interpreter::capture(const Body& body) {
  std::string text;
  std::string* saved = out_;
  out_ = &text;
  try {
    exec_body(body);
  } catch (...) {
    out_ = saved;
    throw;
  }
  out_ = saved;
  return text;
}

Interpreter::Flow Interpreter::exec_body(const Body& body) {
  for (const StmtPtr& stmt : body) {
    const Flow flow = exec(*stmt);
    if (flow != Flow::kNormal) return flow;
  }
  return Flow::kNormal;
}

Interpreter::Flow Interpreter::exec(const Stmt& stmt) {
  try {
    return exec_statement(stmt);
  } catch (const TemplateException&) {
    throw;
  } catch (const LocatedError&) {
    throw;
  } catch (const std::exception& error) {
    throw LocatedError(
        fmt::format("chat template {}: {}", position(stmt.line, stmt.column), error.what()));
  }
}

Interpreter::Flow Interpreter::exec_statement(const Stmt& stmt) {
  switch (stmt.kind) {
    case StmtKind::kText:
      *out_ += stmt.text;
      break;
    case StmtKind::kOutput:
      *out_ += to_str(eval(*stmt.expr));
      break;
    case StmtKind::kIf:
      for (const auto& [condition, body] : stmt.branches)
        if (!condition || truthy(eval(*condition))) return exec_body(body);
      break;
    case StmtKind::kFor:
      return exec_for(stmt);
    case StmtKind::kSet:
      exec_set(stmt);
      break;
    case StmtKind::kSetBlock:
      assign(stmt.targets[0], Value::of(capture(stmt.body)));
      break;
    case StmtKind::kMacro: {
      Value macro;
      macro.kind = Value::Kind::kMacro;
      macro.macro = std::make_shared<Macro>(Macro{&stmt});
      assign(stmt.text, macro);
      break;
    }
    case StmtKind::kBreak:
      return Flow::kBreak;
    case StmtKind::kContinue:
      return Flow::kContinue;
    case StmtKind::kScope:
      return exec_body(stmt.body);
  }
  return Flow::kNormal;
}

void Interpreter::bind_targets(const std::vector<std::string>& targets, const Value& value) {
  if (targets.size() == 1) return assign(targets[0], value);
  const std::vector<Value> parts = iterate(value);
  DSMOE_CHECK(parts.size() == targets.size(), "cannot unpack {} values into {} names", parts.size(),
              targets.size());
  for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], parts[i]);
}

Interpreter::Flow Interpreter::exec_for(const Stmt& stmt) {
  std::vector<Value> items = iterate(eval(*stmt.expr));
  if (stmt.filter) {  // `for x in xs if cond`: filtered before `loop` counts them
    std::vector<Value> kept;
    for (const Value& item : items) {
      scopes_.emplace_back();
      bind_targets(stmt.targets, item);
      const bool keep = truthy(eval(*stmt.filter));
      scopes_.pop_back();
      if (keep) kept.push_back(item);
    }
    items = std::move(kept);
  }
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    Json loop = {
        {"index0", i},     {"index", i + 1},     {"revindex", n - i}, {"revindex0", n - i - 1},
        {"first", i == 0}, {"last", i == n - 1}, {"length", n},       {"depth", 1},
        {"depth0", 0}};
    if (i > 0 && items[i - 1].is_data()) loop["previtem"] = items[i - 1].data();
    if (i + 1 < n && items[i + 1].is_data()) loop["nextitem"] = items[i + 1].data();
    scopes_.push_back({{}, late_names(stmt.body)});  // a fresh scope per iteration, as jinja2 has
    Flow flow;
    try {
      assign("loop", Value::of(std::move(loop)));
      bind_targets(stmt.targets, items[i]);
      flow = exec_body(stmt.body);
    } catch (...) {
      scopes_.pop_back();
      throw;
    }
    scopes_.pop_back();
    if (flow == Flow::kBreak) break;
  }
  if (n == 0) return exec_body(stmt.else_body);
  return Flow::kNormal;
}

void Interpreter::exec_set(const Stmt& stmt) {
  Value value = eval(*stmt.expr);
  if (stmt.attribute.empty()) return bind_targets(stmt.targets, value);
  const Value target = lookup(stmt.targets[0]);
  DSMOE_CHECK(target.kind == Value::Kind::kNamespace,
              "cannot assign attribute on non-namespace object '{}'", stmt.targets[0]);
  target.ns->attributes[stmt.attribute] = std::move(value);
}

Value Interpreter::lookup(const std::string& name) const {
  for (size_t i = scopes_.size(); i-- > 0;) {
    if (i < frame_base_ && i > 0) continue;  // a macro sees its own frames and the top level
    const auto it = scopes_[i].vars.find(name);
    if (it != scopes_[i].vars.end()) return it->second;
    if (scopes_[i].late && scopes_[i].late->count(name))
      return Value::undefined(fmt::format("'{}' is undefined", name));
  }
  const auto it = context_.data().find(name);
  if (it != context_.data().end()) return Value::part_of(context_, *it);
  if (is_global_function(name)) return Value::builtin(name);
  return Value::undefined(fmt::format("'{}' is undefined", name));
}

void Interpreter::assign(const std::string& name, Value value) {
  scopes_.back().vars[name] = std::move(value);
}

Value Interpreter::eval(const Expr& expr) {
  switch (expr.kind) {
    case ExprKind::kLiteral: {  // points at the parsed literal, which outlives the render
      Value literal;
      literal.kind = Value::Kind::kData;
      literal.json = std::shared_ptr<const Json>(std::shared_ptr<const Json>(), &expr.literal);
      return literal;
    }
    case ExprKind::kName:
      return lookup(expr.name);
    case ExprKind::kList: {
      Json list = Json::array();
      for (const ExprPtr& child : expr.children) {
        Value item = eval(*child);
        DSMOE_CHECK(item.is_data(), "a list can only hold plain data, not {}", type_name(item));
        list.push_back(std::move(item.data()));
      }
      return Value::of(std::move(list));
    }
    case ExprKind::kDict: {
      Json dict = Json::object();
      for (size_t i = 0; i + 1 < expr.children.size(); i += 2) {
        const Value key = eval(*expr.children[i]);
        Value value = eval(*expr.children[i + 1]);
        DSMOE_CHECK(key.is_string(), "dict keys must be strings, not {}", type_name(key));
        DSMOE_CHECK(value.is_data(), "a dict can only hold plain data, not {}", type_name(value));
        dict[key.data().get<std::string>()] = std::move(value.data());
      }
      return Value::of(std::move(dict));
    }
    case ExprKind::kGetAttr:
      return get_attr(eval(*expr.children[0]), expr.name);
    case ExprKind::kGetItem:
      return get_item(eval(*expr.children[0]), eval(*expr.children[1]));
    case ExprKind::kSlice: {
      const Value target = eval(*expr.children[0]);
      const auto bound = [&](size_t i) {
        return expr.children[i] ? slice_bound(eval(*expr.children[i])) : std::nullopt;
      };
      return slice(target, bound(1), bound(2), bound(3));
    }
    case ExprKind::kCall:
      return eval_call(expr);
    case ExprKind::kFilter: {
      const Value input = eval(*expr.children[0]);
      Args args;
      Kwargs kwargs;
      eval_arguments(expr, 1, &args, &kwargs);
      return call_filter(expr.name, input, args, kwargs);
    }
    case ExprKind::kTest: {
      const Value input = eval(*expr.children[0]);
      Args args;
      Kwargs kwargs;
      eval_arguments(expr, 1, &args, &kwargs);
      return Value::of(call_test(expr.name, input, args) != expr.negated);
    }
    case ExprKind::kNegate:
      return negate(eval(*expr.children[0]));
    case ExprKind::kNot:
      return Value::of(!truthy(eval(*expr.children[0])));
    case ExprKind::kBinary:
      return binary_op(expr.name, eval(*expr.children[0]), eval(*expr.children[1]));
    case ExprKind::kAnd: {
      Value left = eval(*expr.children[0]);
      return truthy(left) ? eval(*expr.children[1]) : left;
    }
    case ExprKind::kOr: {
      Value left = eval(*expr.children[0]);
      return truthy(left) ? left : eval(*expr.children[1]);
    }
    case ExprKind::kCompare:
      return eval_compare(expr);
    case ExprKind::kConditional:
      if (truthy(eval(*expr.children[1]))) return eval(*expr.children[0]);
      if (expr.children[2]) return eval(*expr.children[2]);
      return Value::undefined("the conditional expression had no else branch");
  }
  fail("internal error: unknown expression kind");
}

Value Interpreter::eval_compare(const Expr& expr) {
  Value left = eval(*expr.children[0]);
  for (size_t i = 0; i < expr.ops.size(); ++i) {
    Value right = eval(*expr.children[i + 1]);
    const std::string& op = expr.ops[i];
    bool result;
    if (op == "==")
      result = py_equal(left, right);
    else if (op == "!=")
      result = !py_equal(left, right);
    else if (op == "<")
      result = py_less(left, right);
    else if (op == ">")
      result = py_less(right, left);
    else if (op == "<=")
      result = !py_less(right, left);
    else if (op == ">=")
      result = !py_less(left, right);
    else if (op == "in")
      result = contains(right, left);
    else
      result = !contains(right, left);  // not in
    if (!result) return Value::of(false);
    left = std::move(right);
  }
  return Value::of(true);
}

void Interpreter::eval_arguments(const Expr& expr, size_t first, Args* args, Kwargs* kwargs) {
  for (size_t i = first; i < expr.children.size(); ++i) args->push_back(eval(*expr.children[i]));
  for (const auto& [key, value] : expr.kwargs) kwargs->emplace_back(key, eval(*value));
}

Value Interpreter::eval_call(const Expr& expr) {
  const Expr& callee = *expr.children[0];
  Args args;
  Kwargs kwargs;
  if (callee.kind == ExprKind::kGetAttr) {  // a method: obj.name(args)
    const Value object = eval(*callee.children[0]);
    eval_arguments(expr, 1, &args, &kwargs);
    Value result;
    if (call_method(object, callee.name, args, kwargs, &result)) return result;
    const Value function = get_attr(object, callee.name);
    if (function.kind == Value::Kind::kMacro) return call_macro(*function.macro, args, kwargs);
    DSMOE_CHECK(!function.is_undefined(), "'{}' object has no method '{}'", type_name(object),
                callee.name);
    fail(fmt::format("'{}' object is not callable", type_name(function)));
  }
  const Value function = eval(callee);
  eval_arguments(expr, 1, &args, &kwargs);
  if (function.kind == Value::Kind::kMacro) return call_macro(*function.macro, args, kwargs);
  if (function.kind == Value::Kind::kBuiltin) return call_global(function.name, args, kwargs);
  require_defined(function);
  fail(fmt::format("'{}' object is not callable", type_name(function)));
}

Value Interpreter::call_macro(const Macro& macro, const Args& args, const Kwargs& kwargs) {
  const Stmt& definition = *macro.definition;
  DSMOE_CHECK(args.size() <= definition.targets.size(),
              "macro '{}' takes not more than {} argument(s)", definition.text,
              definition.targets.size());
  Scope frame{{}, late_names(definition.body)};
  for (size_t i = 0; i < definition.targets.size(); ++i) {
    const std::string& parameter = definition.targets[i];
    if (const Value* given = find_arg(args, kwargs, i, parameter.c_str())) {
      frame.vars[parameter] = *given;
    } else if (definition.defaults[i]) {
      frame.vars[parameter] = eval(*definition.defaults[i]);
    } else {
      frame.vars[parameter] = Value::undefined(fmt::format("'{}' is undefined", parameter));
    }
  }
  for (const auto& [key, unused] : kwargs) {
    const auto& names = definition.targets;
    DSMOE_CHECK(std::find(names.begin(), names.end(), key) != names.end(),
                "macro '{}' takes no keyword argument '{}'", definition.text, key);
  }
  DSMOE_CHECK(macro_depth_ < kMaxMacroDepth, "maximum macro recursion depth ({}) exceeded",
              kMaxMacroDepth);
  ++macro_depth_;
  const size_t saved_base = frame_base_;
  frame_base_ = scopes_.size();
  scopes_.push_back(std::move(frame));
  std::string text;
  try {
    text = capture(definition.body);
  } catch (...) {
    scopes_.pop_back();
    frame_base_ = saved_base;
    --macro_depth_;
    throw;
  }
  scopes_.pop_back();
  frame_base_ = saved_base;
  --macro_depth_;
  return Value::of(text);
}

}  // namespace dsmoe::text::jinja
