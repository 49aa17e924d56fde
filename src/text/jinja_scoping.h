// jinja_scoping.h: which variables of a frame (the top level, a loop body, a macro body) start
// out undefined.
//
// jinja2 compiles a name a frame assigns into a local of that frame. The local starts as the
// enclosing value when the frame reads the name before assigning it, assigns it only in some
// branches of an if, or an enclosing frame knows the name too; otherwise it starts undefined, and
// a nested loop body or macro that reads it before the assignment runs sees undefined, not the
// context's value.
#pragma once
#include <map>
#include <set>
#include <string>

#include "text/jinja_ast.h"

namespace dsmoe::text::jinja {

// For the template's top level and every loop, macro and generation body in it: the names that
// start out undefined (jinja2's idtracking.py: FrameSymbolVisitor, Symbols.store/branch_update).
std::map<const Body*, std::set<std::string>> names_undefined_until_assigned(const Body& top_level);

}  // namespace dsmoe::text::jinja
