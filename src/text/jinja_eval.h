// jinja_eval.h: runs a parsed template over a context: scopes (loop bodies and macros get their
// own, `if` does not), loops with `loop`, set/namespace, macros, break/continue.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "text/jinja_ast.h"
#include "text/jinja_builtins.h"

namespace dsmoe::text::jinja {

class Interpreter {
 public:
  // `context` (a JSON object) holds the template's variables; it must outlive the interpreter.
  explicit Interpreter(const Json& context);

  // Renders `body`. Runtime errors throw dsmoe::Error naming the tag's line:column;
  // raise_exception() throws TemplateException with the template's message alone.
  std::string render(const Body& body);

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  // A frame's variables: the top level, a loop iteration, a macro call. `late`: the names the
  // frame's body assigns before reading them, undefined until assigned (jinja_scoping.h).
  struct Scope {
    std::map<std::string, Value> vars;
    const std::set<std::string>* late = nullptr;
  };

  Flow exec_body(const Body& body);
  Flow exec(const Stmt& stmt);
  Flow exec_statement(const Stmt& stmt);
  Flow exec_for(const Stmt& stmt);
  void exec_set(const Stmt& stmt);
  void bind_targets(const std::vector<std::string>& targets, const Value& value);

  Value eval(const Expr& expr);
  Value eval_call(const Expr& expr);
  Value eval_compare(const Expr& expr);
  void eval_arguments(const Expr& expr, size_t first, Args* args, Kwargs* kwargs);
  Value call_macro(const Macro& macro, const Args& args, const Kwargs& kwargs);

  Value lookup(const std::string& name) const;
  void assign(const std::string& name, Value value);
  std::string capture(const Body& body);

  Value context_;  // the context, not owned (it outlives the interpreter)
  const std::set<std::string>* late_names(const Body& body);
  std::map<const Body*, std::set<std::string>> late_names_;  // per frame body
  std::vector<Scope> scopes_;  // [0]: the template's top level; then loops and macros
  size_t frame_base_ = 0;      // inside a macro: its first scope (scopes below it are hidden)
  std::string* out_ = nullptr;
  int macro_depth_ = 0;
};

}  // namespace dsmoe::text::jinja
