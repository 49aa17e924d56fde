// pre_tokenizer.cpp: see pre_tokenizer.h. Semantics follow tokenizers' NormalizedString::split and
// PreTokenizedString::split: a regex's matches and the stretches between them make a list of
// (range, is_match); the behavior decides what becomes a piece; empty pieces are dropped; each step
// runs on every piece the step before it produced.
#include "text/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "text/json_util.h"
#include "text/utf8.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

// ByteLevel's own split (GPT-2's pattern), used when its use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Escapes a literal for a regex (Split with a "String" pattern).
std::string escape_literal(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}-/").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

SplitBehavior parse_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  fail(
      fmt::format("{}: behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, "
                  "MergedWithNext, Contiguous",
                  where, name));
}

struct Span {
  size_t start, end;
  bool is_match;
};

// tokenizers' behaviors other than Isolated, on the whole list of spans. Returns the pieces.
std::vector<Span> apply_behavior(const std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<Span> pieces;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      return spans;
    case SplitBehavior::kRemoved:
      for (const Span& span : spans)
        if (!span.is_match) pieces.push_back(span);
      return pieces;
    case SplitBehavior::kContiguous:
      for (const Span& span : spans) {
        if (span.is_match == previous_match && !pieces.empty())
          pieces.back().end = span.end;
        else
          pieces.push_back(span);
        previous_match = span.is_match;
      }
      return pieces;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && !pieces.empty())
          pieces.back().end = span.end;
        else
          pieces.push_back(span);
        previous_match = span.is_match;
      }
      return pieces;
    case SplitBehavior::kMergedWithNext:
      for (auto span = spans.rbegin(); span != spans.rend(); ++span) {
        if (span->is_match && !previous_match && !pieces.empty())
          pieces.back().start = span->start;
        else
          pieces.push_back(*span);
        previous_match = span->is_match;
      }
      return {pieces.rbegin(), pieces.rend()};
  }
  return pieces;
}

// The byte after the code point that starts at pos.
size_t next_boundary(std::string_view text, size_t pos) {
  next_code_point(text, &pos);
  return pos;
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& json, const std::string& where) {
  PreTokenizer pre_tokenizer;
  if (!json.is_null()) pre_tokenizer.add_from_json(json, where + ": pre_tokenizer");
  return pre_tokenizer;
}

void PreTokenizer::add_split(std::string_view pattern, SplitBehavior behavior, bool invert,
                             const std::string& where) {
  Step step;
  step.kind = Step::Kind::kSplit;
  step.regex.emplace(pattern, where);
  step.behavior = behavior;
  step.invert = invert;
  steps_.push_back(std::move(step));
}

void PreTokenizer::add_from_json(const nlohmann::json& json, const std::string& field) {
  DSMOE_CHECK(json.is_object() && json.contains("type") && json["type"].is_string(),
              "{}: expected an object with a \"type\"", field);
  const std::string type = json["type"];
  if (type == "Sequence") {
    const auto& list = member(json, "pretokenizers");
    DSMOE_CHECK(list.is_array(), "{}.pretokenizers: expected a list", field);
    for (size_t i = 0; i < list.size(); ++i)
      add_from_json(list[i], fmt::format("{}.pretokenizers[{}]", field, i));
  } else if (type == "Split") {
    const auto& pattern = member(json, "pattern");
    std::string regex;
    if (pattern.contains("Regex") && pattern["Regex"].is_string())
      regex = pattern["Regex"];
    else if (pattern.contains("String") && pattern["String"].is_string())
      regex = escape_literal(pattern["String"].get<std::string>());
    else
      fail(fmt::format("{}.pattern: expected {{\"Regex\": ...}} or {{\"String\": ...}}", field));
    const auto behavior = parse_behavior(json.value("behavior", "Isolated"), field + ".behavior");
    add_split(regex, behavior, json.value("invert", false), field + ".pattern");
  } else if (type == "ByteLevel") {
    // The byte-level mapping itself happens in BPE (bytes map to ids directly).
    if (json.value("add_prefix_space", false)) {
      Step step;
      step.kind = Step::Kind::kPrefixSpace;
      steps_.push_back(std::move(step));
    }
    if (json.value("use_regex", true))
      add_split(kGpt2Pattern, SplitBehavior::kIsolated, false, field + " (GPT-2 regex)");
  } else if (type == "Digits") {
    const bool individual = json.value("individual_digits", false);
    add_split(individual ? "\\p{N}" : "\\p{N}+", SplitBehavior::kIsolated, false, field);
  } else {
    fail(
        fmt::format("{}: pre-tokenizer type '{}' is not supported (supported: Sequence, Split, "
                    "ByteLevel, Digits)",
                    field, type));
  }
}

void PreTokenizer::split(std::string_view text, MatchScratch& scratch, PieceSink emit) const {
  if (!text.empty()) run(0, text, scratch, emit);
}

void PreTokenizer::run(size_t step_index, std::string_view piece, MatchScratch& scratch,
                       PieceSink emit) const {
  if (step_index == steps_.size()) {
    emit(piece);
    return;
  }
  const Step& step = steps_[step_index];
  auto next = [&](std::string_view sub_piece) { run(step_index + 1, sub_piece, scratch, emit); };
  if (step.kind == Step::Kind::kPrefixSpace) {
    if (piece.front() == ' ') return next(piece);
    std::string prefixed(1, ' ');
    prefixed.append(piece);
    return next(prefixed);
  }
  run_split(step, piece, scratch, next);
}

void PreTokenizer::run_split(const Step& step, std::string_view piece, MatchScratch& scratch,
                             PieceSink next) const {
  const bool streaming = step.behavior == SplitBehavior::kIsolated;  // the common case
  std::vector<Span> spans;
  auto add = [&](size_t start, size_t end, bool is_match) {
    if (streaming) {
      if (end > start) next(piece.substr(start, end - start));
    } else {
      spans.push_back({start, end, is_match != step.invert});
    }
  };
  size_t previous_end = 0, search_from = 0, match_start = 0, match_end = 0;
  while (search_from <= piece.size() &&
         step.regex->find(piece, search_from, scratch, &match_start, &match_end)) {
    if (match_end == match_start) {  // an empty match splits nothing; move on one code point
      if (match_start >= piece.size()) break;
      search_from = next_boundary(piece, match_start);
      continue;
    }
    if (match_start > previous_end) add(previous_end, match_start, false);
    add(match_start, match_end, true);
    previous_end = search_from = match_end;
  }
  if (previous_end < piece.size()) add(previous_end, piece.size(), false);
  if (streaming) return;
  for (const Span& span : apply_behavior(spans, step.behavior))
    if (span.end > span.start) next(piece.substr(span.start, span.end - span.start));
}

}  // namespace dsmoe::text
