// pre_tokenizer.h: tokenizers' pre-tokenizer stage: cuts text into the pieces BPE encodes one by
// one. Built from tokenizer.json's "pre_tokenizer": Sequence, Split (Regex or String pattern, every
// behavior, invert), ByteLevel (add_prefix_space, use_regex) and Digits.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "text/regex.h"

namespace dsmoe::text {

// A non-owning callable taking one piece (the pieces are views valid during the call only).
class PieceSink {
 public:
  template <class F>
  PieceSink(F& function)  // NOLINT: implicit, like a function_ref
      : object_(&function),
        call_([](void* object, std::string_view piece) { (*static_cast<F*>(object))(piece); }) {}
  void operator()(std::string_view piece) const { call_(object_, piece); }

 private:
  void* object_;
  void (*call_)(void*, std::string_view);
};

// tokenizers' SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  // `json` is tokenizer.json's "pre_tokenizer" (null: the whole text is one piece); `where` names
  // the file for messages.
  static PreTokenizer from_json(const nlohmann::json& json, const std::string& where);

  // Calls emit(piece) for each non-empty piece of text (valid UTF-8), in order.
  void split(std::string_view text, MatchScratch& scratch, PieceSink emit) const;

 private:
  struct Step {
    enum class Kind { kSplit, kPrefixSpace } kind = Kind::kSplit;
    std::optional<Regex> regex;  // for kSplit
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
  };
  void add_from_json(const nlohmann::json& json, const std::string& field);
  void add_split(std::string_view pattern, SplitBehavior behavior, bool invert,
                 const std::string& where);
  void run(size_t step, std::string_view piece, MatchScratch& scratch, PieceSink emit) const;
  void run_split(const Step& step, std::string_view piece, MatchScratch& scratch,
                 PieceSink next) const;

  std::vector<Step> steps_;
};

}  // namespace dsmoe::text
