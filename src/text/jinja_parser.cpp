// jinja_parser.cpp: see jinja_parser.h. A recursive-descent parser following jinja2's
// parser.py (parse_condexpr .. parse_primary) for precedence and for where filters, tests and
// calls bind.
#include "text/jinja_parser.h"

#include <cerrno>
#include <cstdlib>
#include <initializer_list>

#include "text/jinja_lexer.h"
#include "util/check.h"

namespace dsmoe::text::jinja {
namespace {

std::string describe(const Token& token) {
  switch (token.kind) {
    case TokenKind::kEnd:
      return "end of template";
    case TokenKind::kText:
      return "text";
    case TokenKind::kVariableBegin:
      return "'{{'";
    case TokenKind::kVariableEnd:
      return "'}}'";
    case TokenKind::kBlockBegin:
      return "'{%'";
    case TokenKind::kBlockEnd:
      return "'%}'";
    case TokenKind::kString:
      return "string literal";
    case TokenKind::kInteger:
    case TokenKind::kFloat:
      return "number " + token.value;
    default:
      return "'" + token.value + "'";
  }
}

// Deeper nesting (of expressions or of block tags) is refused rather than risking the stack.
constexpr int kMaxNesting = 256;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_all() {
    std::string end_tag;
    Body body = parse_body({}, &end_tag);
    return body;
  }

 private:
  const Token& current() const { return tokens_[pos_]; }
  const Token& peek(size_t ahead = 1) const {
    return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)];
  }
  const Token& advance() { return tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_]; }

  bool is_op(const char* op) const {
    return current().kind == TokenKind::kOperator && current().value == op;
  }
  bool is_name(const char* name) const {
    return current().kind == TokenKind::kName && current().value == name;
  }
  bool skip_op(const char* op) { return is_op(op) ? (advance(), true) : false; }
  bool skip_name(const char* name) { return is_name(name) ? (advance(), true) : false; }

  // Python's integers have no bound; ours are 64-bit (found by fuzz_chat_template: std::stoll
  // threw out_of_range).
  int64_t integer_literal(const Token& token) const {
    errno = 0;
    const long long value = std::strtoll(token.value.c_str(), nullptr, 10);
    if (errno == ERANGE)
      fail(fmt::format("chat template {}: the integer {} does not fit in 64 bits",
                       position(token.line, token.column), token.value));
    return static_cast<int64_t>(value);
  }

  [[noreturn]] void fail_here(const std::string& expected) const {
    fail(fmt::format("chat template {}: expected {}, got {}",
                     position(current().line, current().column), expected, describe(current())));
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail_here(fmt::format("'{}'", op));
  }
  void expect(TokenKind kind, const char* what) {
    if (current().kind != kind) fail_here(what);
    advance();
  }
  std::string expect_name(const char* what) {
    if (current().kind != TokenKind::kName) fail_here(what);
    return advance().value;
  }

  ExprPtr node(ExprKind kind, const Token& at) {
    auto expr = std::make_unique<Expr>();
    expr->kind = kind;
    expr->line = at.line;
    expr->column = at.column;
    return expr;
  }
  ExprPtr binary(ExprKind kind, const Token& at, ExprPtr left, ExprPtr right, std::string op = "") {
    auto expr = node(kind, at);
    expr->name = std::move(op);
    expr->children.push_back(std::move(left));
    expr->children.push_back(std::move(right));
    return expr;
  }

  // ---- expressions, lowest precedence first ----
  ExprPtr parse_expression(bool with_conditional = true) {
    ExprPtr expr = parse_or();
    while (with_conditional && is_name("if")) {
      const Token at = advance();
      auto conditional = node(ExprKind::kConditional, at);
      conditional->children.push_back(std::move(expr));
      conditional->children.push_back(parse_or());
      conditional->children.push_back(skip_name("else") ? parse_expression() : nullptr);
      expr = std::move(conditional);
    }
    return expr;
  }

  // An expression, or several separated by commas (a tuple, held as a list).
  ExprPtr parse_tuple(bool with_conditional = true) {
    const Token at = current();
    ExprPtr first = parse_expression(with_conditional);
    if (!is_op(",")) return first;
    auto list = node(ExprKind::kList, at);
    list->children.push_back(std::move(first));
    while (skip_op(",")) {
      if (current().kind == TokenKind::kBlockEnd || current().kind == TokenKind::kVariableEnd)
        break;
      list->children.push_back(parse_expression(with_conditional));
    }
    return list;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const Token at = advance();
      left = binary(ExprKind::kOr, at, std::move(left), parse_and());
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const Token at = advance();
      left = binary(ExprKind::kAnd, at, std::move(left), parse_not());
    }
    return left;
  }

  // Counts one level of recursion while alive; too many is a syntax error.
  class NestingGuard {
   public:
    explicit NestingGuard(Parser* parser) : parser_(parser) {
      if (++parser_->depth_ > kMaxNesting) parser_->fail_here("less deeply nested template");
    }
    ~NestingGuard() { --parser_->depth_; }

   private:
    Parser* parser_;
  };

  ExprPtr parse_not() {
    const NestingGuard guard(this);
    if (is_name("not")) {
      const Token at = advance();
      auto expr = node(ExprKind::kNot, at);
      expr->children.push_back(parse_not());
      return expr;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = current();
    ExprPtr first = parse_math1();
    ExprPtr compare;
    while (true) {
      std::string op;
      if (current().kind == TokenKind::kOperator &&
          (is_op("==") || is_op("!=") || is_op("<") || is_op("<=") || is_op(">") || is_op(">="))) {
        op = advance().value;
      } else if (skip_name("in")) {
        op = "in";
      } else if (is_name("not") && peek().kind == TokenKind::kName && peek().value == "in") {
        advance(), advance();
        op = "notin";
      } else {
        break;
      }
      if (!compare) {
        compare = node(ExprKind::kCompare, at);
        compare->children.push_back(std::move(first));
      }
      compare->ops.push_back(op);
      compare->children.push_back(parse_math1());
    }
    return compare ? std::move(compare) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = advance();
      left = binary(ExprKind::kBinary, at, std::move(left), parse_concat(), at.value);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const Token at = advance();
      left = binary(ExprKind::kBinary, at, std::move(left), parse_math2(), "~");
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = advance();
      left = binary(ExprKind::kBinary, at, std::move(left), parse_pow(), at.value);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary();
    while (is_op("**")) {
      const Token at = advance();
      left = binary(ExprKind::kBinary, at, std::move(left), parse_unary(), "**");
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    const NestingGuard guard(this);
    ExprPtr expr;
    if (is_op("-")) {
      const Token at = advance();
      expr = node(ExprKind::kNegate, at);
      expr->children.push_back(parse_unary(false));
    } else if (skip_op("+")) {
      expr = parse_unary(false);
    } else {
      expr = parse_primary();
    }
    expr = parse_postfix(std::move(expr));
    return with_filter ? parse_filter_expr(std::move(expr)) : std::move(expr);
  }

  ExprPtr parse_primary() {
    const Token at = current();
    switch (at.kind) {
      case TokenKind::kName: {
        advance();
        auto expr = node(ExprKind::kLiteral, at);
        if (at.value == "true" || at.value == "True")
          expr->literal = true;
        else if (at.value == "false" || at.value == "False")
          expr->literal = false;
        else if (at.value == "none" || at.value == "None")
          expr->literal = nullptr;
        else
          expr->kind = ExprKind::kName, expr->name = at.value;
        return expr;
      }
      case TokenKind::kString: {
        auto expr = node(ExprKind::kLiteral, at);
        std::string text;
        while (current().kind == TokenKind::kString) text += advance().value;
        expr->literal = text;
        return expr;
      }
      case TokenKind::kInteger:
      case TokenKind::kFloat: {
        advance();
        auto expr = node(ExprKind::kLiteral, at);
        if (at.kind == TokenKind::kFloat) {
          expr->literal = std::strtod(at.value.c_str(), nullptr);  // 1e999 is inf, as in Python
        } else {
          expr->literal = integer_literal(at);
        }
        return expr;
      }
      case TokenKind::kOperator:
        if (skip_op("(")) {
          if (skip_op(")")) return node(ExprKind::kList, at);  // the empty tuple
          ExprPtr inner = parse_expression();
          if (is_op(",")) {
            auto list = node(ExprKind::kList, at);
            list->children.push_back(std::move(inner));
            while (skip_op(",") && !is_op(")")) list->children.push_back(parse_expression());
            inner = std::move(list);
          }
          expect_op(")");
          return inner;
        }
        if (skip_op("[")) {
          auto list = node(ExprKind::kList, at);
          while (!is_op("]")) {
            list->children.push_back(parse_expression());
            if (!skip_op(",")) break;
          }
          expect_op("]");
          return list;
        }
        if (skip_op("{")) {
          auto dict = node(ExprKind::kDict, at);
          while (!is_op("}")) {
            dict->children.push_back(parse_expression());
            expect_op(":");
            dict->children.push_back(parse_expression());
            if (!skip_op(",")) break;
          }
          expect_op("}");
          return dict;
        }
        break;
      default:
        break;
    }
    fail_here("an expression");
  }

  ExprPtr parse_postfix(ExprPtr expr) {
    while (true) {
      const Token at = current();
      if (skip_op(".")) {
        if (current().kind == TokenKind::kInteger) {
          auto item = node(ExprKind::kLiteral, current());
          item->literal = integer_literal(advance());
          expr = binary(ExprKind::kGetItem, at, std::move(expr), std::move(item));
        } else {
          auto attr = node(ExprKind::kGetAttr, at);
          attr->name = expect_name("an attribute name");
          attr->children.push_back(std::move(expr));
          expr = std::move(attr);
        }
      } else if (skip_op("[")) {
        expr = parse_subscript(std::move(expr), at);
      } else if (is_op("(")) {
        expr = parse_call(std::move(expr));
      } else {
        return expr;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr target, const Token& at) {
    ExprPtr start = is_op(":") ? nullptr : parse_expression();
    if (!skip_op(":")) {
      expect_op("]");
      return binary(ExprKind::kGetItem, at, std::move(target), std::move(start));
    }
    auto slice = node(ExprKind::kSlice, at);
    slice->children.push_back(std::move(target));
    slice->children.push_back(std::move(start));
    slice->children.push_back(is_op(":") || is_op("]") ? nullptr : parse_expression());
    slice->children.push_back(skip_op(":") && !is_op("]") ? parse_expression() : nullptr);
    expect_op("]");
    return slice;
  }

  // Parses "(args)" into `call`'s children (after those it already has) and kwargs.
  void parse_arguments(Expr* call) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**"))
        fail_here("an argument (*args and **kwargs are not supported)");
      if (current().kind == TokenKind::kName && peek().kind == TokenKind::kOperator &&
          peek().value == "=") {
        std::string key = advance().value;
        advance();
        call->kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        call->children.push_back(parse_expression());
      }
      if (!skip_op(",")) break;
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto call = node(ExprKind::kCall, current());
    call->children.push_back(std::move(callee));
    parse_arguments(call.get());
    return call;
  }

  ExprPtr parse_filter_expr(ExprPtr expr) {
    while (true) {
      const Token at = current();
      if (skip_op("|")) {
        auto filter = node(ExprKind::kFilter, at);
        filter->name = expect_name("a filter name");
        filter->children.push_back(std::move(expr));
        if (is_op("(")) parse_arguments(filter.get());
        expr = std::move(filter);
      } else if (skip_name("is")) {
        auto test = node(ExprKind::kTest, at);
        test->negated = skip_name("not");
        test->name = expect_name("a test name");
        test->children.push_back(std::move(expr));
        const TokenKind next = current().kind;
        if (is_op("(")) {
          parse_arguments(test.get());
        } else if ((next == TokenKind::kName || next == TokenKind::kString ||
                    next == TokenKind::kInteger || next == TokenKind::kFloat || is_op("[") ||
                    is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          test->children.push_back(parse_postfix(parse_primary()));
        }
        expr = std::move(test);
      } else if (is_op("(")) {
        expr = parse_call(std::move(expr));
      } else {
        return expr;
      }
    }
  }

  // ---- statements ----
  StmtPtr statement(StmtKind kind, const Token& at) {
    auto stmt = std::make_unique<Stmt>();
    stmt->kind = kind;
    stmt->line = at.line;
    stmt->column = at.column;
    return stmt;
  }

  // Parses statements until a block tag named in `end_names` (consumed up to its name, stored
  // in *end_name) or, when end_names is empty, the end of the template.
  Body parse_body(std::initializer_list<const char*> end_names, std::string* end_name) {
    Body body;
    while (true) {
      const Token at = current();
      if (at.kind == TokenKind::kEnd) {
        if (end_names.size() == 0) return body;
        fail_here(fmt::format("'{{% {} %}}'", *(end_names.end() - 1)));
      }
      if (at.kind == TokenKind::kText) {
        auto text = statement(StmtKind::kText, advance());
        text->text = at.value;
        body.push_back(std::move(text));
      } else if (at.kind == TokenKind::kVariableBegin) {
        advance();
        auto output = statement(StmtKind::kOutput, at);
        output->expr = parse_tuple();
        expect(TokenKind::kVariableEnd, "'}}'");
        body.push_back(std::move(output));
      } else {
        expect(TokenKind::kBlockBegin, "'{%'");
        const Token& tag = current();
        for (const char* name : end_names) {
          if (tag.kind == TokenKind::kName && tag.value == name) {
            *end_name = advance().value;
            return body;
          }
        }
        body.push_back(parse_statement(at));
      }
    }
  }

  StmtPtr parse_statement(const Token& at) {
    const NestingGuard guard(this);
    const Token tag = current();
    const std::string keyword = tag.kind == TokenKind::kName ? tag.value : "";
    if (keyword == "if") return parse_if(at);
    if (keyword == "for") return parse_for(at);
    if (keyword == "set") return parse_set(at);
    if (keyword == "macro") return parse_macro(at);
    if (keyword == "break" || keyword == "continue") {
      advance();
      expect(TokenKind::kBlockEnd, "'%}'");
      return statement(keyword == "break" ? StmtKind::kBreak : StmtKind::kContinue, at);
    }
    if (keyword == "generation") {
      advance();
      expect(TokenKind::kBlockEnd, "'%}'");
      auto scope = statement(StmtKind::kScope, at);
      std::string end;
      scope->body = parse_body({"endgeneration"}, &end);
      expect(TokenKind::kBlockEnd, "'%}'");
      return scope;
    }
    fail(fmt::format("chat template {}: unknown or unexpected tag {}",
                     position(tag.line, tag.column), describe(tag)));
  }

  StmtPtr parse_if(const Token& at) {
    advance();
    auto stmt = statement(StmtKind::kIf, at);
    ExprPtr condition = parse_tuple(false);  // jinja2: no `a if b else c` directly in an if tag
    while (true) {
      expect(TokenKind::kBlockEnd, "'%}'");
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, &end);
      stmt->branches.emplace_back(std::move(condition), std::move(body));
      if (end == "endif") break;
      if (end == "elif") {
        condition = parse_tuple(false);
        continue;
      }
      expect(TokenKind::kBlockEnd, "'%}'");
      stmt->branches.emplace_back(nullptr, parse_body({"endif"}, &end));
      break;
    }
    expect(TokenKind::kBlockEnd, "'%}'");
    return stmt;
  }

  StmtPtr parse_for(const Token& at) {
    advance();
    auto stmt = statement(StmtKind::kFor, at);
    const bool parenthesized = skip_op("(");
    do {
      stmt->targets.push_back(expect_name("a loop variable name"));
    } while (skip_op(","));
    if (parenthesized) expect_op(")");
    if (!skip_name("in")) fail_here("'in'");
    stmt->expr = parse_tuple(false);
    if (skip_name("if")) stmt->filter = parse_expression();
    if (is_name("recursive")) fail_here("'%}' (recursive loops are not supported)");
    expect(TokenKind::kBlockEnd, "'%}'");
    std::string end;
    stmt->body = parse_body({"else", "endfor"}, &end);
    if (end == "else") {
      expect(TokenKind::kBlockEnd, "'%}'");
      stmt->else_body = parse_body({"endfor"}, &end);
    }
    expect(TokenKind::kBlockEnd, "'%}'");
    return stmt;
  }

  StmtPtr parse_set(const Token& at) {
    advance();
    auto stmt = statement(StmtKind::kSet, at);
    stmt->targets.push_back(expect_name("a variable name"));
    if (skip_op(".")) {
      stmt->attribute = expect_name("an attribute name");
    } else {
      while (skip_op(",")) stmt->targets.push_back(expect_name("a variable name"));
    }
    if (current().kind == TokenKind::kBlockEnd && stmt->targets.size() == 1 &&
        stmt->attribute.empty()) {
      advance();
      stmt->kind = StmtKind::kSetBlock;
      std::string end;
      stmt->body = parse_body({"endset"}, &end);
      expect(TokenKind::kBlockEnd, "'%}'");
      return stmt;
    }
    expect_op("=");
    stmt->expr = parse_tuple();
    expect(TokenKind::kBlockEnd, "'%}'");
    return stmt;
  }

  StmtPtr parse_macro(const Token& at) {
    advance();
    auto stmt = statement(StmtKind::kMacro, at);
    stmt->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(")")) {
      stmt->targets.push_back(expect_name("a parameter name"));
      stmt->defaults.push_back(skip_op("=") ? parse_expression() : nullptr);
      if (!skip_op(",")) break;
    }
    expect_op(")");
    expect(TokenKind::kBlockEnd, "'%}'");
    std::string end;
    stmt->body = parse_body({"endmacro"}, &end);
    if (current().kind == TokenKind::kName && current().value == stmt->text) advance();
    expect(TokenKind::kBlockEnd, "'%}'");
    return stmt;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) { return Parser(tokenize(source)).parse_all(); }

}  // namespace dsmoe::text::jinja
