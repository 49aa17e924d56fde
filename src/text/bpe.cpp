// bpe.cpp: see bpe.h. The merge order is tokenizers' Word::merge_all: repeatedly merge the adjacent
// pair of lowest rank (leftmost first among equal ranks) until no adjacent pair has a merge.
#include "text/bpe.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>

#include "text/byte_level.h"
#include "text/json_util.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();

// "a b" (tokenizers' older format) or ["a", "b"].
std::pair<std::string, std::string> parse_merge(const nlohmann::json& merge,
                                                const std::string& where) {
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string())
    return {merge[0], merge[1]};
  DSMOE_CHECK(merge.is_string(), "{}: expected \"a b\" or [\"a\", \"b\"]", where);
  const std::string& text = merge.get_ref<const std::string&>();
  const size_t space = text.find(' ');
  DSMOE_CHECK(space != std::string::npos && text.find(' ', space + 1) == std::string::npos,
              "{}: '{}' is not two tokens separated by one space", where, text);
  return {text.substr(0, space), text.substr(space + 1)};
}

}  // namespace

void MergeTable::reserve(size_t n_merges) {
  const size_t capacity = std::bit_ceil(std::max<size_t>(2 * n_merges, 2));
  slots_.assign(capacity, Slot{kEmpty, {}});
  mask_ = capacity - 1;
  shift_ = 64 - std::countr_zero(capacity);
}

void MergeTable::insert(int32_t left, int32_t right, Merge merge) {
  const uint64_t key = pack(left, right);
  for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
    Slot& entry = slots_[slot];
    if (entry.key == kEmpty || entry.key == key) {
      entry = Slot{key, merge};
      return;
    }
  }
}

void TokenTable::build(const std::vector<std::string>* tokens) {
  tokens_ = tokens;
  const size_t capacity = std::bit_ceil(std::max<size_t>(2 * tokens->size(), 2));
  slots_.assign(capacity, Slot{0, -1});
  mask_ = capacity - 1;
  for (size_t id = 0; id < tokens->size(); ++id) {
    const std::string& token = (*tokens)[id];
    if (token.empty()) continue;
    const uint64_t h = hash(token);
    for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      Slot& entry = slots_[slot];
      if (entry.id < 0 ||
          (entry.tag == static_cast<uint32_t>(h >> 32) && (*tokens)[entry.id] == token)) {
        entry = Slot{static_cast<uint32_t>(h >> 32), static_cast<int32_t>(id)};
        break;
      }
    }
  }
}

std::optional<int32_t> TokenTable::find(std::string_view token) const {
  if (slots_.empty()) return std::nullopt;
  const uint64_t h = hash(token);
  const auto tag = static_cast<uint32_t>(h >> 32);
  for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
    const Slot& entry = slots_[slot];
    if (entry.id < 0) return std::nullopt;
    if (entry.tag == tag && (*tokens_)[entry.id] == token) return entry.id;
  }
}

Bpe& Bpe::operator=(Bpe&& other) noexcept {
  tokens_ = std::move(other.tokens_);
  vocab_ = std::move(other.vocab_);
  vocab_.build(&tokens_);  // the table points at tokens_
  byte_ids_ = other.byte_ids_;
  merges_ = std::move(other.merges_);
  unk_id_ = other.unk_id_;
  fuse_unk_ = other.fuse_unk_;
  ignore_merges_ = other.ignore_merges_;
  return *this;
}

Bpe Bpe::from_json(const nlohmann::json& model, const std::string& where) {
  const std::string field = where + ": model";
  BpeData data;
  const auto& vocab = member(model, "vocab");
  DSMOE_CHECK(vocab.is_object(), "{}.vocab: expected an object of token: id", field);
  for (const auto& [token, id] : vocab.items()) {
    DSMOE_CHECK(id.is_number_integer(), "{}.vocab: the id of '{}' is not an integer", field, token);
    data.vocab.emplace_back(token, id.get<int64_t>());
  }
  const auto& merges = member(model, "merges");
  DSMOE_CHECK(merges.is_null() || merges.is_array(), "{}.merges: expected a list", field);
  for (size_t rank = 0; rank < merges.size(); ++rank)
    data.merges.push_back(parse_merge(merges[rank], fmt::format("{}.merges[{}]", field, rank)));
  return build(std::move(data), model, where);
}

Bpe Bpe::build(BpeData data, const nlohmann::json& model, const std::string& where) {
  const std::string field = where + ": model";
  DSMOE_CHECK(model.is_object(), "{}: expected an object", field);
  const std::string type = model.value("type", "BPE");
  DSMOE_CHECK(type == "BPE", "{}.type: '{}' is not supported (only BPE)", field, type);
  for (const char* unsupported : {"continuing_subword_prefix", "end_of_word_suffix"})
    DSMOE_CHECK(
        !model.contains(unsupported) || model[unsupported].is_null() || model[unsupported] == "",
        "{}.{}: not supported", field, unsupported);
  DSMOE_CHECK(!model.value("byte_fallback", false), "{}.byte_fallback: not supported", field);
  DSMOE_CHECK(!model.contains("dropout") || model["dropout"].is_null() ||
                  model["dropout"].get<double>() == 0.0,
              "{}.dropout: BPE dropout is not supported", field);

  Bpe bpe;
  DSMOE_CHECK(!data.vocab.empty(), "{}.vocab: expected an object of token: id", field);
  for (auto& [token, id] : data.vocab) {
    DSMOE_CHECK(id >= 0 && id < std::numeric_limits<int32_t>::max(),
                "{}.vocab: the id of '{}' is not a non-negative 32-bit integer", field, token);
    if (static_cast<size_t>(id) >= bpe.tokens_.size()) bpe.tokens_.resize(id + 1);
    bpe.tokens_[id] = std::move(token);
  }
  bpe.vocab_.build(&bpe.tokens_);
  for (int byte = 0; byte < 256; ++byte) {
    const auto id = bpe.token_to_id(byte_to_string(static_cast<uint8_t>(byte)));
    bpe.byte_ids_[byte] = id ? *id : -1;
  }

  bpe.merges_.reserve(data.merges.size());
  std::string merged;
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const auto& [left, right] = data.merges[rank];
    merged.assign(left).append(right);
    const auto left_id = bpe.token_to_id(left), right_id = bpe.token_to_id(right);
    const auto merged_id = bpe.token_to_id(merged);
    DSMOE_CHECK(left_id && right_id, "{}.merges[{}]: '{}' or '{}' is not in the vocabulary", field,
                rank, left, right);
    DSMOE_CHECK(merged_id, "{}.merges[{}]: the merged token '{}' is not in the vocabulary", field,
                rank, merged);
    bpe.merges_.insert(*left_id, *right_id, {static_cast<int32_t>(rank), *merged_id});
  }

  const auto& unk = member(model, "unk_token");
  if (unk.is_string()) {
    bpe.unk_id_ = bpe.token_to_id(unk.get<std::string>());
    DSMOE_CHECK(bpe.unk_id_, "{}.unk_token: '{}' is not in the vocabulary", field,
                unk.get<std::string>());
  }
  bpe.fuse_unk_ = model.value("fuse_unk", false);
  bpe.ignore_merges_ = model.value("ignore_merges", false);
  return bpe;
}

std::optional<int32_t> Bpe::token_to_id(std::string_view token) const { return vocab_.find(token); }

void Bpe::initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const {
  symbols.clear();
  bool previous_unknown = false;
  for (const char byte : piece) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(byte)];
    if (id >= 0) {
      symbols.push_back(id);
      previous_unknown = false;
    } else if (unk_id_) {  // tokenizers drops an unknown character when there is no unk_token
      if (!(fuse_unk_ && previous_unknown)) symbols.push_back(*unk_id_);
      previous_unknown = true;
    }
  }
}

void Bpe::encode_piece(std::string_view piece, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    if (const auto whole = token_to_id(byte_level_encode(piece))) {
      ids.push_back(*whole);
      return;
    }
  }
  thread_local std::vector<int32_t> symbols;
  initial_symbols(piece, symbols);
  if (symbols.size() <= kMaxScanSymbols)
    merge_by_scan(symbols);
  else
    merge_by_heap(symbols);
  ids.insert(ids.end(), symbols.begin(), symbols.end());
}

void Bpe::merge_by_scan(std::vector<int32_t>& symbols) const {
  if (symbols.size() < 2) return;
  // pair_rank[i], pair_merged[i]: the merge of (symbols[i], symbols[i + 1]), kNoRank if none.
  thread_local std::vector<int32_t> pair_rank, pair_merged;
  auto lookup = [&](size_t i) {
    const MergeTable::Merge* merge = merges_.find(symbols[i], symbols[i + 1]);
    pair_rank[i] = merge ? merge->rank : kNoRank;
    pair_merged[i] = merge ? merge->merged_id : -1;
  };
  size_t n = symbols.size();
  pair_rank.resize(n - 1);
  pair_merged.resize(n - 1);
  for (size_t i = 0; i + 1 < n; ++i) lookup(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (pair_rank[i] < pair_rank[best]) best = i;
    if (pair_rank[best] == kNoRank) break;
    symbols[best] = pair_merged[best];
    symbols.erase(symbols.begin() + best + 1);
    pair_rank.erase(pair_rank.begin() + best);
    pair_merged.erase(pair_merged.begin() + best);
    --n;
    if (best + 1 < n) lookup(best);
    if (best > 0) lookup(best - 1);
  }
}

void Bpe::merge_by_heap(std::vector<int32_t>& symbols) const {
  const auto n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  // A doubly linked list over the original positions; a merged-away symbol is dead (-2 in next).
  thread_local std::vector<int32_t> prev, next;
  prev.resize(n);
  next.resize(n);
  for (int32_t i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Candidate {
    int32_t rank, position, merged_id;
    int32_t left_id, right_id;  // the pair when pushed
    // std::push_heap keeps the largest on top: the largest here is the lowest (rank, position).
    bool operator<(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : position > other.position;
    }
  };
  thread_local std::vector<Candidate> queue;
  queue.clear();
  auto push = [&](int32_t position) {
    if (position < 0 || next[position] < 0) return;
    if (const auto* merge = merges_.find(symbols[position], symbols[next[position]])) {
      queue.push_back(
          {merge->rank, position, merge->merged_id, symbols[position], symbols[next[position]]});
      std::push_heap(queue.begin(), queue.end());
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  constexpr int32_t kDead = -2;
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const Candidate top = queue.back();
    queue.pop_back();
    const int32_t left = top.position, right = next[left];
    // Stale when the left symbol died or its pair changed since this candidate was pushed
    // (tokenizers looks the pair up again and compares the merged id: the same test, since a
    // symbol only ever grows).
    if (right < 0) continue;  // dead, or the last symbol
    if (symbols[left] != top.left_id || symbols[right] != top.right_id) continue;
    symbols[left] = top.merged_id;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    next[right] = kDead;
    push(prev[left]);
    push(left);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace dsmoe::text
