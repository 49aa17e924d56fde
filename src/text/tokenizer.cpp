// tokenizer.cpp: see tokenizer.h. Encoding runs the stages in order; the piece cache (one per
// loaded tokenizer) is used by whichever thread holds it, other threads encode without it.
#include "text/tokenizer.h"

#include "text/byte_level.h"
#include "text/tokenizer_impl.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

// Collects the ids of one encode() call.
class Encoder final : public AddedTokenSink {
 public:
  Encoder(const Tokenizer::Impl& impl, PieceCache* cache, MatchScratch& scratch,
          std::vector<int32_t>& ids)
      : impl_(impl), cache_(cache), scratch_(scratch), ids_(ids) {}

  void on_token(int32_t id) override { ids_.push_back(id); }

  // Valid UTF-8 goes through the pre-tokenizer; each run of invalid bytes is one piece.
  void on_text(std::string_view text) override {
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t valid = valid_utf8_prefix(text.substr(pos));
      if (valid > 0) {
        auto emit = [this](std::string_view piece) { encode_piece(piece); };
        impl_.pre_tokenizer.split(text.substr(pos, valid), scratch_, emit);
        pos += valid;
      }
      size_t invalid_end = pos;
      while (invalid_end < text.size()) {
        size_t next = invalid_end;
        if (next_code_point(text, &next) >= 0) break;
        invalid_end = next;
      }
      if (invalid_end > pos) impl_.bpe.encode_piece(text.substr(pos, invalid_end - pos), ids_);
      pos = invalid_end;
    }
  }

 private:
  void encode_piece(std::string_view piece) {
    if (cache_ == nullptr || piece.size() > PieceCache::kMaxKeyBytes) {
      impl_.bpe.encode_piece(piece, ids_);
      return;
    }
    const uint64_t hash = PieceCache::hash(piece);
    const int32_t* cached = nullptr;
    size_t n_cached = 0;
    if (cache_->find(piece, hash, &cached, &n_cached)) {
      ids_.insert(ids_.end(), cached, cached + n_cached);
      return;
    }
    const size_t first = ids_.size();
    impl_.bpe.encode_piece(piece, ids_);
    cache_->insert(piece, hash, ids_.data() + first, ids_.size() - first);
  }

  const Tokenizer::Impl& impl_;
  PieceCache* cache_;
  MatchScratch& scratch_;
  std::vector<int32_t>& ids_;
};

// Collects the pieces (byte-level strings) of one pieces() call.
class PieceCollector final : public AddedTokenSink {
 public:
  PieceCollector(const Tokenizer::Impl& impl, MatchScratch& scratch)
      : impl_(impl), scratch_(scratch) {}
  void on_token(int32_t id) override { pieces.push_back(impl_.tokens[id]); }
  void on_text(std::string_view text) override {
    auto emit = [this](std::string_view piece) { pieces.push_back(byte_level_encode(piece)); };
    impl_.pre_tokenizer.split(text, scratch_, emit);
  }
  std::vector<std::string> pieces;

 private:
  const Tokenizer::Impl& impl_;
  MatchScratch& scratch_;
};

MatchScratch& thread_scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& dir) {
  auto impl = std::make_shared<Impl>();
  load_tokenizer_files(dir, *impl);
  return Tokenizer(std::move(impl));
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& impl = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  {
    std::unique_lock<std::mutex> lock(impl.cache_mutex, std::try_to_lock);
    Encoder encoder(impl, lock.owns_lock() ? &impl.cache : nullptr, thread_scratch(), ids);
    impl.added_tokens->split(text, thread_scratch(), encoder);
  }
  std::vector<int64_t> out;
  out.reserve(ids.size() + 2);
  if (add_special_tokens) {
    if (impl.use_template) {
      out.insert(out.end(), impl.template_prefix.begin(), impl.template_prefix.end());
    } else if (impl.add_bos && impl.bos_id) {
      out.push_back(*impl.bos_id);
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (add_special_tokens) {
    if (impl.use_template) {
      out.insert(out.end(), impl.template_suffix.begin(), impl.template_suffix.end());
    } else if (impl.add_eos && impl.eos_id) {
      out.push_back(*impl.eos_id);
    }
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::string text;
  for (const int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(impl.kinds.size())) continue;
    const TokenKind kind = impl.kinds[id];
    if (kind == TokenKind::kNone || (skip_special_tokens && kind == TokenKind::kSpecial)) continue;
    text += impl.token_bytes[id];
  }
  return text;
}

std::vector<std::string> Tokenizer::pieces(std::string_view text) const {
  DSMOE_CHECK(is_valid_utf8(text), "pieces(): the text is not valid UTF-8");
  PieceCollector collector(*impl_, thread_scratch());
  impl_->added_tokens->split(text, thread_scratch(), collector);
  return std::move(collector.pieces);
}

std::string Tokenizer::token(int64_t id) const {
  DSMOE_CHECK(id >= 0 && id < vocab_size(), "token id {} is out of range [0, {})", id,
              vocab_size());
  return impl_->tokens[id];
}

std::string Tokenizer::token_bytes(int64_t id) const {
  DSMOE_CHECK(id >= 0 && id < vocab_size(), "token id {} is out of range [0, {})", id,
              vocab_size());
  return impl_->token_bytes[id];
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->kinds.size()); }

std::optional<int64_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int64_t> Tokenizer::eos_id() const { return impl_->eos_id; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::add_eos() const { return impl_->add_eos; }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
const std::string& Tokenizer::dir() const { return impl_->dir; }

bool Tokenizer::is_special(int64_t id) const {
  return id >= 0 && id < vocab_size() && impl_->kinds[id] == TokenKind::kSpecial;
}

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto added = impl_->added_ids.find(token); added != impl_->added_ids.end())
    return added->second;
  const auto id = impl_->bpe.token_to_id(token);
  if (!id) return std::nullopt;
  return *id;
}

}  // namespace dsmoe::text
