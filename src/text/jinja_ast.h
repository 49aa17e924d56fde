// jinja_ast.h: the parsed form of a template: expression and statement nodes.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja_value.h"

namespace dsmoe::text::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  kLiteral,      // literal
  kName,         // name
  kList,         // children: the items (also tuples)
  kDict,         // children: key, value, key, value, ...
  kGetAttr,      // children[0].name
  kGetItem,      // children[0][children[1]]
  kSlice,        // children[0][children[1]:children[2]:children[3]] (null parts absent)
  kCall,         // children[0](children[1..], kwargs)
  kFilter,       // children[0] | name(children[1..], kwargs)
  kTest,         // children[0] is [not] name(children[1..])
  kNegate,       // -children[0]
  kNot,          // not children[0]
  kBinary,       // children[0] name children[1], name one of + - * / // % ** ~
  kAnd,          // children[0] and children[1]
  kOr,           // children[0] or children[1]
  kCompare,      // children[0] ops[0] children[1] ops[1] children[2] ...
  kConditional,  // children[0] if children[1] else children[2] (null: undefined)
};

struct Expr {
  ExprKind kind;
  int line = 0, column = 0;
  Json literal;
  std::string name;
  bool negated = false;  // kTest: `is not`
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare: == != < <= > >= in notin
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  kText,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches: (condition, body) ...; the else branch has no condition
  kFor,       // for targets in expr [if filter]: body [else: else_body]
  kSet,       // set targets = expr; or set targets[0].attribute = expr
  kSetBlock,  // set targets[0] %}body{% endset
  kMacro,     // macro name(targets = defaults): body
  kBreak,
  kContinue,
  kScope,  // a body run as is ({% generation %} of transformers)
};

struct Stmt {
  StmtKind kind;
  int line = 0, column = 0;
  std::string text;  // kText; kMacro: the name
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::string> targets;
  std::string attribute;          // kSet on a namespace attribute
  std::vector<ExprPtr> defaults;  // kMacro: one per parameter (null: none)
  Body body, else_body;
};

// A macro value: its definition lives in the template the ChatTemplate owns.
struct Macro {
  const Stmt* definition;
};

}  // namespace dsmoe::text::jinja
