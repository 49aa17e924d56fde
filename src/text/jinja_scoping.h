// jinja_scoping.h: which top-level variables start out undefined for loop bodies and macros.
//
// jinja2 compiles a name the template's top level assigns into a local of the top-level frame.
// That local starts as the context's value ("resolve") when the top level reads the name before
// assigning it, or assigns it only in some branches of an if; otherwise it starts undefined, and
// a loop body or macro that reads it before the assignment runs sees undefined, not the context.
#pragma once
#include <set>
#include <string>

#include "text/jinja_ast.h"

namespace dsmoe::text::jinja {

// The top-level names that start out undefined (jinja2's idtracking.py, FrameSymbolVisitor).
std::set<std::string> names_undefined_until_assigned(const Body& top_level);

}  // namespace dsmoe::text::jinja
