// tokenizer_json.cpp: see tokenizer_json.h. A SAX handler that forwards every event to
// nlohmann's DOM builder except those inside model.vocab and model.merges, which it keeps itself.
#include "text/tokenizer_json.h"

#include "util/check.h"

namespace dsmoe::text {
namespace {

using nlohmann::json;

class Handler {
 public:
  Handler(TokenizerJson& out, const std::string& path) : out_(out), dom_(out.root), path_(path) {}

  bool null() { return capture_ == Capture::kNone ? dom_.null() : refuse("null"); }
  bool boolean(bool value) {
    return capture_ == Capture::kNone ? dom_.boolean(value) : refuse("a boolean");
  }
  bool number_integer(json::number_integer_t value) {
    if (capture_ == Capture::kVocab && depth_ == capture_depth_) return add_vocab(value);
    return capture_ == Capture::kNone ? dom_.number_integer(value) : refuse("a number");
  }
  bool number_unsigned(json::number_unsigned_t value) {
    if (capture_ == Capture::kVocab && depth_ == capture_depth_)
      return add_vocab(value > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(value));
    return capture_ == Capture::kNone ? dom_.number_unsigned(value) : refuse("a number");
  }
  bool number_float(json::number_float_t value, const json::string_t& text) {
    return capture_ == Capture::kNone ? dom_.number_float(value, text) : refuse("a number");
  }
  bool binary(json::binary_t& value) {
    return capture_ == Capture::kNone ? dom_.binary(value) : refuse("binary");
  }
  bool string(json::string_t& value) {
    if (capture_ == Capture::kNone) return dom_.string(value);
    if (capture_ != Capture::kMerges) return refuse("a string");
    if (depth_ == capture_depth_ + 1) {  // ["a", "b"]
      merge_parts_.push_back(std::move(value));
      return true;
    }
    if (depth_ != capture_depth_) return refuse("a string");
    // "a b"
    const size_t space = value.find(' ');
    if (space == std::string::npos || value.find(' ', space + 1) != std::string::npos)
      return fail_with(
          fmt::format("{}: model.merges[{}]: '{}' is not two tokens separated by "
                      "one space",
                      path_, out_.bpe.merges.size(), value));
    out_.bpe.merges.emplace_back(value.substr(0, space), value.substr(space + 1));
    return true;
  }
  bool start_object(std::size_t size) {
    ++depth_;
    if (pending_ == Capture::kVocab) return begin_capture(Capture::kVocab);
    if (pending_ == Capture::kMerges) return refuse_pending("an object");
    if (capture_ != Capture::kNone) return refuse("an object");
    return dom_.start_object(size);
  }
  bool key(json::string_t& name) {
    if (capture_ == Capture::kVocab) {
      vocab_key_ = std::move(name);
      return true;
    }
    if (capture_ != Capture::kNone) return refuse("an object");
    if (depth_ == 1) root_key_ = name;
    if (depth_ == 2 && root_key_ == "model" && (name == "vocab" || name == "merges")) {
      pending_ = name == "vocab" ? Capture::kVocab : Capture::kMerges;
      return true;
    }
    return dom_.key(name);
  }
  bool end_object() {
    --depth_;
    if (capture_ != Capture::kNone && depth_ < capture_depth_) {
      capture_ = Capture::kNone;
      return true;
    }
    return dom_.end_object();
  }
  bool start_array(std::size_t size) {
    ++depth_;
    if (pending_ == Capture::kMerges) return begin_capture(Capture::kMerges);
    if (pending_ == Capture::kVocab) return refuse_pending("a list");
    if (capture_ == Capture::kMerges && depth_ == capture_depth_ + 1) {
      merge_parts_.clear();
      return true;
    }
    if (capture_ != Capture::kNone) return refuse("a list");
    return dom_.start_array(size);
  }
  bool end_array() {
    --depth_;
    if (capture_ == Capture::kMerges && depth_ == capture_depth_) {
      if (merge_parts_.size() != 2)
        return fail_with(fmt::format("{}: model.merges[{}]: expected [\"a\", \"b\"]", path_,
                                     out_.bpe.merges.size()));
      out_.bpe.merges.emplace_back(std::move(merge_parts_[0]), std::move(merge_parts_[1]));
      return true;
    }
    if (capture_ != Capture::kNone && depth_ < capture_depth_) {
      capture_ = Capture::kNone;
      return true;
    }
    return dom_.end_array();
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    return fail_with(fmt::format("{}: not valid JSON: {}", path_, e.what()));
  }

  const std::string& error() const { return error_; }

 private:
  enum class Capture { kNone, kVocab, kMerges };

  bool begin_capture(Capture capture) {
    capture_ = capture;
    capture_depth_ = depth_;
    pending_ = Capture::kNone;
    return true;
  }
  bool add_vocab(int64_t id) {
    out_.bpe.vocab.emplace_back(std::move(vocab_key_), id);
    return true;
  }
  bool refuse(const char* what) {
    return fail_with(fmt::format("{}: model.{}: unexpected {}", path_,
                                 capture_ == Capture::kVocab ? "vocab" : "merges", what));
  }
  bool refuse_pending(const char* what) {
    return fail_with(fmt::format("{}: model.{}: expected {}, not {}", path_,
                                 pending_ == Capture::kVocab ? "vocab" : "merges",
                                 pending_ == Capture::kVocab ? "an object of token: id" : "a list",
                                 what));
  }
  bool fail_with(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  TokenizerJson& out_;
  nlohmann::detail::json_sax_dom_parser<json> dom_;
  const std::string& path_;
  int depth_ = 0;  // open objects and lists
  std::string root_key_, vocab_key_;
  Capture pending_ = Capture::kNone;  // the key just read starts a capture
  Capture capture_ = Capture::kNone;
  int capture_depth_ = 0;  // depth_ inside the captured object or list
  std::vector<std::string> merge_parts_;
  std::string error_;
};

}  // namespace

TokenizerJson parse_tokenizer_json(const std::string& text, const std::string& path) {
  TokenizerJson out;
  Handler handler(out, path);
  const bool ok = json::sax_parse(text, &handler);
  if (!ok) {
    DSMOE_CHECK(!handler.error().empty(), "{}: not valid JSON", path);
    fail(handler.error());
  }
  return out;
}

}  // namespace dsmoe::text
