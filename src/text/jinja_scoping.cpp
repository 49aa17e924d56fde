// jinja_scoping.cpp: see jinja_scoping.h. Mirrors jinja2's symbol tracking of a frame:
// loads and stores in visit order, if branches merged by Symbols.branch_update; for-loop bodies,
// macro bodies and block sets are frames of their own and are not visited.
#include "text/jinja_scoping.h"

#include <map>

namespace dsmoe::text::jinja {
namespace {

struct Symbols {
  std::map<std::string, bool> starts_resolved;  // refs: true = context value, false = undefined
  std::set<std::string> stores;

  void load(const std::string& name) { starts_resolved.emplace(name, true); }
  void store(const std::string& name) {
    stores.insert(name);
    starts_resolved.emplace(name, false);
  }

  // Merges the symbols of an if's branches (body, elifs, else): a name not stored in all of
  // them starts resolved.
  void branch_update(const std::vector<Symbols>& branches) {
    std::map<std::string, size_t> n_storing;
    for (const Symbols& branch : branches)
      for (const std::string& name : branch.stores)
        if (!stores.count(name)) ++n_storing[name];
    for (const Symbols& branch : branches) {
      for (const auto& [name, resolved] : branch.starts_resolved) starts_resolved[name] = resolved;
      stores.insert(branch.stores.begin(), branch.stores.end());
    }
    for (const auto& [name, count] : n_storing)
      if (count != branches.size()) starts_resolved[name] = true;
  }
};

void visit_expr(const Expr* expr, Symbols* symbols) {
  if (!expr) return;
  if (expr->kind == ExprKind::kName) symbols->load(expr->name);
  for (const ExprPtr& child : expr->children) visit_expr(child.get(), symbols);
  for (const auto& [unused, value] : expr->kwargs) visit_expr(value.get(), symbols);
}

void visit_body(const Body& body, Symbols* symbols);

// One jinja2 If node: the branches from `first` on, where branches after the first with a
// condition are its elif nodes and a final one without a condition its else.
void visit_if(const Stmt& stmt, Symbols* symbols) {
  const auto& branches = stmt.branches;
  visit_expr(branches[0].first.get(), symbols);
  Symbols body = *symbols, elifs = *symbols, otherwise = *symbols;
  visit_body(branches[0].second, &body);
  for (size_t i = 1; i < branches.size(); ++i) {
    if (!branches[i].first) {
      visit_body(branches[i].second, &otherwise);
      continue;
    }
    // An elif is an If node of its own with no elif or else.
    visit_expr(branches[i].first.get(), &elifs);
    Symbols elif_body = elifs;
    visit_body(branches[i].second, &elif_body);
    elifs.branch_update({elif_body, elifs, elifs});
  }
  symbols->branch_update({body, elifs, otherwise});
}

void visit_body(const Body& body, Symbols* symbols) {
  for (const StmtPtr& stmt : body) {
    switch (stmt->kind) {
      case StmtKind::kOutput:
        visit_expr(stmt->expr.get(), symbols);
        break;
      case StmtKind::kIf:
        visit_if(*stmt, symbols);
        break;
      case StmtKind::kFor:
        visit_expr(stmt->expr.get(), symbols);
        break;
      case StmtKind::kSet:
        visit_expr(stmt->expr.get(), symbols);
        if (!stmt->attribute.empty())
          symbols->load(stmt->targets[0]);
        else
          for (const std::string& name : stmt->targets) symbols->store(name);
        break;
      case StmtKind::kSetBlock:
        symbols->store(stmt->targets[0]);
        break;
      case StmtKind::kMacro:
        symbols->store(stmt->text);
        break;
      default:
        break;
    }
  }
}

// Every frame nested directly in `body` (not inside a further frame): loop, macro and
// generation bodies, with the parameters each binds.
void nested_frames(const Body& body,
                   std::vector<std::pair<const Body*, std::vector<std::string>>>* frames) {
  for (const StmtPtr& stmt : body) {
    if (stmt->kind == StmtKind::kIf) {
      for (const auto& [unused, branch] : stmt->branches) nested_frames(branch, frames);
    } else if (stmt->kind == StmtKind::kFor) {
      std::vector<std::string> params = stmt->targets;
      params.push_back("loop");
      frames->emplace_back(&stmt->body, params);
    } else if (stmt->kind == StmtKind::kMacro) {
      frames->emplace_back(&stmt->body, stmt->targets);
    } else if (stmt->kind == StmtKind::kScope) {
      frames->emplace_back(&stmt->body, std::vector<std::string>{});
    }
  }
}

void analyze_frame(const Body& body, const std::vector<std::string>& params,
                   const std::set<std::string>& outer_refs,
                   std::map<const Body*, std::set<std::string>>* late) {
  Symbols symbols;
  for (const std::string& name : params) symbols.load(name);
  visit_body(body, &symbols);
  std::set<std::string>& names = (*late)[&body];
  for (const auto& [name, resolved] : symbols.starts_resolved)
    if (!resolved && symbols.stores.count(name) && !outer_refs.count(name)) names.insert(name);
  std::set<std::string> refs = outer_refs;
  for (const auto& [name, unused] : symbols.starts_resolved) refs.insert(name);
  std::vector<std::pair<const Body*, std::vector<std::string>>> frames;
  nested_frames(body, &frames);
  for (const auto& [frame, frame_params] : frames) analyze_frame(*frame, frame_params, refs, late);
}

}  // namespace

std::map<const Body*, std::set<std::string>> names_undefined_until_assigned(const Body& top_level) {
  std::map<const Body*, std::set<std::string>> late;
  analyze_frame(top_level, {}, {}, &late);
  return late;
}

}  // namespace dsmoe::text::jinja
