// test_tokenizer.cpp: the tokenizer.json tokenizer against Hugging Face tokenizers' outputs for
// DeepSeek-V3 (tests/data/tokenizer-v3: every case and chat), each stage alone, round trips, long
// runs, errors, the streaming UTF-8 decoder and `dsmoe tokenize`.
#include <cstdio>
#include <random>
#include <thread>

#include "test_util.h"
#include "text/bpe.h"
#include "text/byte_level.h"
#include "text/tokenizer.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

using nlohmann::json;

const std::string kV3Dir = std::string(DSMOE_TEST_DATA) + "/tokenizer-v3";

// Loaded once per test program (7.8 MB of JSON).
const Tokenizer& v3() {
  static const Tokenizer tokenizer = Tokenizer::load(kV3Dir);
  return tokenizer;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

std::vector<int64_t> ids_of(const json& list) { return list.get<std::vector<int64_t>>(); }

TEST(Tokenizer, EveryFixtureCaseMatchesHuggingFace) {
  const auto cases = read_jsonl(kV3Dir + "/cases.jsonl");
  ASSERT_EQ(cases.size(), 95u);
  for (const json& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(c["category"].get<std::string>() + ": " + text.substr(0, 80));
    const std::vector<int64_t> ids = v3().encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"]));
    EXPECT_EQ(v3().encode(text, /*add_special_tokens=*/true), ids_of(c["ids_with_special"]));
    std::vector<std::string> tokens;
    for (const int64_t id : ids) tokens.push_back(v3().token(id));
    EXPECT_EQ(tokens, c["tokens"].get<std::vector<std::string>>());
    EXPECT_EQ(v3().decode(ids), c["decoded"].get<std::string>());
    EXPECT_EQ(v3().pieces(text), c["pieces"].get<std::vector<std::string>>());
  }
}

TEST(Tokenizer, EveryFixtureChatMatchesHuggingFace) {
  const auto chats = read_jsonl(kV3Dir + "/chat.jsonl");
  ASSERT_EQ(chats.size(), 3u);
  for (const json& chat : chats) {
    const std::string rendered = chat["rendered"];
    EXPECT_EQ(v3().encode(rendered), ids_of(chat["ids"])) << rendered;
    EXPECT_EQ(v3().decode(ids_of(chat["ids"])), rendered);
  }
}

TEST(Tokenizer, ConfigOfDeepSeekV3) {
  const Tokenizer& t = v3();
  EXPECT_EQ(t.vocab_size(), 128815);
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.bos_token(), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(t.eos_token(), "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(t.add_bos());
  EXPECT_FALSE(t.add_eos());
  EXPECT_TRUE(t.is_special(0));
  EXPECT_FALSE(t.is_special(128803));  // <｜User｜> is an added token but not special
  EXPECT_FALSE(t.is_special(270));
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(t.token_to_id("Ġthe"), 270);
  EXPECT_EQ(t.token_to_id("no such token"), std::nullopt);
  EXPECT_EQ(t.token(270), "Ġthe");
  EXPECT_EQ(t.token_bytes(270), " the");
  EXPECT_NE(t.chat_template().find("<｜Assistant｜>"), std::string::npos);
  EXPECT_THROW(t.token(-1), Error);
  EXPECT_THROW(t.token(t.vocab_size()), Error);
}

TEST(Tokenizer, DecodeSkipsSpecialTokensOnRequest) {
  const std::vector<int64_t> ids =
      v3().encode("<｜begin▁of▁sentence｜><｜User｜>Hi<｜end▁of▁sentence｜>");
  EXPECT_EQ(v3().decode(ids, /*skip_special_tokens=*/true), "<｜User｜>Hi");
  // Ids without a token are skipped, as tokenizers does.
  EXPECT_EQ(v3().decode({19923, -5, 129000}), "Hello");
}

TEST(Tokenizer, EmptyText) {
  EXPECT_TRUE(v3().encode("").empty());
  EXPECT_EQ(v3().encode("", true), std::vector<int64_t>{0});
  EXPECT_EQ(v3().decode({}), "");
}

// Any bytes, valid UTF-8 or not, come back byte for byte; valid text never meets the invalid path.
TEST(Tokenizer, DecodeRoundTripsArbitraryBytes) {
  std::mt19937 rng(7);
  const std::vector<std::string> alphabet = {
      "a",          "Z",   " ",    "  ",       "\n",   "\r\n",    "\t",       "7",
      "42",         "é",   "中",   "日本",     "ー",   "🎉",       "\xc2\x85", "!?",
      "<｜User｜>", "<｜", "\xff", "\xe4\xb8", "\x80", "\xf0\x9f"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string text;
    const int n_parts = static_cast<int>(rng() % 40);
    for (int i = 0; i < n_parts; ++i) text += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(v3().decode(v3().encode(text)), text) << trial;
  }
  std::string all_bytes;
  for (int byte = 0; byte < 256; ++byte) all_bytes.push_back(static_cast<char>(byte));
  EXPECT_EQ(v3().decode(v3().encode(all_bytes)), all_bytes);
  // An invalid byte is a piece of its own: its neighbours encode as they would alone.
  const auto hello = v3().encode("Hello");
  const auto with_invalid = v3().encode("Hello\xff");
  ASSERT_EQ(with_invalid.size(), hello.size() + 1);
  EXPECT_EQ(v3().token(with_invalid.back()), byte_level_encode("\xff"));
}

TEST(Tokenizer, LongRunsOfSpacesNewlinesAndDigits) {
  constexpr size_t kRun = 100000;
  for (const std::string& unit : {std::string(" "), std::string("\n"), std::string("7"),
                                  std::string(" \n"), std::string("ab "), std::string("中")}) {
    std::string text;
    while (text.size() < kRun) text += unit;
    text = "x" + text + "y";
    const auto ids = v3().encode(text);
    EXPECT_EQ(v3().decode(ids), text) << "unit '" << unit << "'";
  }
  // Digits go in threes: 3000 digits, 1000 pieces of one token each.
  std::string digits;
  for (int i = 0; i < 3000; ++i) digits.push_back(static_cast<char>('0' + (i * 7 + 3) % 10));
  EXPECT_EQ(v3().encode(digits).size(), 1000u);
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  const std::string text =
      "Concurrent encoding: 你好, world! 12345 " + std::string(50, ' ') + "end";
  const auto expected = v3().encode(text);
  std::vector<std::vector<int64_t>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) results[t] = v3().encode(text + std::to_string(i % 3));
      results[t] = v3().encode(text);
    });
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) EXPECT_EQ(result, expected);
}

// A small hand-written tokenizer.json: BPE over bytes "a", "b", "c" with rank ties and a merge
// whose rank is lower than the merge that made its left part.
json tiny_tokenizer_json() {
  json vocab = json::object();
  int32_t next_id = 0;
  for (int byte = 0; byte < 256; ++byte)
    vocab[byte_to_string(static_cast<uint8_t>(byte))] = next_id++;
  for (const char* token : {"ab", "bc", "abc", "aa", "aaa", "aaaa", "cab", "Ġa"})
    vocab[token] = next_id++;
  json tokenizer = {
      {"version", "1.0"},
      {"added_tokens",
       json::array({{{"id", 300}, {"content", "<s>"}, {"special", true}},
                    {{"id", 301}, {"content", "<tool>"}, {"special", false}, {"rstrip", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {{{"type", "Split"},
               {"pattern", {{"Regex", "\\s+"}}},
               {"behavior", "MergedWithNext"},
               {"invert", false}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({"a a", "b c", "a b", "aa a", "c ab", "aa aa", "a bc", "Ġ a"})}}}};
  return tokenizer;
}

TEST(Bpe, ScanAndHeapMergeAgree) {
  const Bpe bpe = Bpe::from_json(tiny_tokenizer_json()["model"], "tiny");
  std::mt19937 rng(3);
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<int32_t> symbols(1 + rng() % 60);
    for (auto& symbol : symbols) symbol = 'a' - '!' + static_cast<int32_t>(rng() % 3);
    std::vector<int32_t> by_scan = symbols, by_heap = symbols;
    bpe.merge_by_scan(by_scan);
    bpe.merge_by_heap(by_heap);
    ASSERT_EQ(by_scan, by_heap) << trial;
  }
  std::vector<int32_t> ids;
  // a+a (rank 0) twice from the left, b+c (1), then aa+a (3) before aa+aa (5): aa, aaa, bc.
  bpe.encode_piece("aaaaabc", ids);
  std::vector<std::string> tokens;
  for (const int32_t id : ids) tokens.push_back(bpe.tokens()[id]);
  EXPECT_EQ(tokens, (std::vector<std::string>{"aa", "aaa", "bc"}));
}

TEST(Tokenizer, HandWrittenTokenizerJsonAndConfigVariants) {
  TempDir dir;
  write_text(dir / "tokenizer.json", tiny_tokenizer_json().dump());
  write_text(dir / "tokenizer_config.json",
             json({{"bos_token", "<s>"},
                   {"eos_token", {{"content", "<s>"}}},
                   {"add_bos_token", true},
                   {"add_eos_token", true},
                   {"chat_template", json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                  {{"name", "default"}, {"template", "D"}}})}})
                 .dump());
  const Tokenizer t = Tokenizer::load(dir.str());
  EXPECT_EQ(t.chat_template(), "D");
  EXPECT_EQ(t.bos_id(), 300);
  EXPECT_EQ(t.eos_id(), 300);
  // MergedWithNext: the spaces join the word after them; rstrip eats the spaces after <tool>.
  const auto ids = t.encode("ab  a<tool>   cab", true);
  std::vector<std::string> tokens;
  for (const int64_t id : ids) tokens.push_back(t.token(id));
  EXPECT_EQ(tokens, (std::vector<std::string>{"<s>", "ab", "Ġ", "Ġa", "<tool>", "cab", "<s>"}));
  EXPECT_EQ(t.decode(ids, true), "ab  a<tool>cab");
  EXPECT_EQ(t.vocab_size(), 302);

  // single_word: an added token inside a word is left to BPE.
  json single_word = tiny_tokenizer_json();
  single_word["added_tokens"].push_back(
      {{"id", 302}, {"content", "bc"}, {"single_word", true}, {"special", false}});
  write_text(dir / "tokenizer.json", single_word.dump());
  const Tokenizer with_single_word = Tokenizer::load(dir.str());
  std::vector<std::string> single_word_tokens;
  for (const int64_t id : with_single_word.encode("abc bc"))
    single_word_tokens.push_back(with_single_word.token(id));
  EXPECT_EQ(single_word_tokens, (std::vector<std::string>{"abc", "Ġ", "bc"}));

  // Merges written as ["a", "b"] (newer tokenizers) read the same.
  json with_lists = tiny_tokenizer_json();
  for (auto& merge : with_lists["model"]["merges"]) {
    const std::string text = merge;
    merge = json::array({text.substr(0, text.find(' ')), text.substr(text.find(' ') + 1)});
  }
  write_text(dir / "tokenizer.json", with_lists.dump());
  EXPECT_EQ(Tokenizer::load(dir.str()).encode("ab  a<tool>   cab", true), ids);
}

TEST(Tokenizer, ErrorsNameTheFileAndField) {
  TempDir dir;
  auto message_of = [&] {
    try {
      Tokenizer::load(dir.str());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of().find(dir / "tokenizer.json"), std::string::npos) << message_of();
  write_text(dir / "tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0}, ");  // cut short
  EXPECT_NE(message_of().find("tokenizer.json: not valid JSON"), std::string::npos) << message_of();
  json bad = tiny_tokenizer_json();
  bad["model"]["merges"].push_back("a zzz");
  write_text(dir / "tokenizer.json", bad.dump());
  EXPECT_NE(message_of().find("merges[8]"), std::string::npos) << message_of();
  bad = tiny_tokenizer_json();
  bad["normalizer"] = {{"type", "NFKC"}};
  write_text(dir / "tokenizer.json", bad.dump());
  EXPECT_NE(message_of().find("normalizer"), std::string::npos) << message_of();
  bad = tiny_tokenizer_json();
  bad["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  write_text(dir / "tokenizer.json", bad.dump());
  EXPECT_NE(message_of().find("pretokenizers[0].pattern"), std::string::npos) << message_of();
  bad = tiny_tokenizer_json();
  bad["model"]["vocab"] = json::array();
  write_text(dir / "tokenizer.json", bad.dump());
  EXPECT_NE(message_of().find("model.vocab: expected an object"), std::string::npos)
      << message_of();
  bad = tiny_tokenizer_json();
  bad["model"]["merges"][2] = "abc";
  write_text(dir / "tokenizer.json", bad.dump());
  EXPECT_NE(message_of().find("model.merges[2]: 'abc' is not two tokens"), std::string::npos)
      << message_of();
  write_text(dir / "tokenizer.json", tiny_tokenizer_json().dump());
  write_text(dir / "tokenizer_config.json", "{\"bos_token\": \"<nope>\"}");
  EXPECT_NE(message_of().find("tokenizer_config.json: bos_token '<nope>'"), std::string::npos)
      << message_of();
  write_text(dir / "tokenizer_config.json", "[1, 2");
  EXPECT_NE(message_of().find("tokenizer_config.json: not valid JSON"), std::string::npos)
      << message_of();
}

TEST(Utf8Stream, ReturnsCompleteCharactersAsTheyCome) {
  Utf8Stream stream;
  const std::string text = "a中🎉é";
  std::string out;
  for (const char byte : text) out += stream.push(std::string(1, byte));
  EXPECT_EQ(out + stream.flush(), text);
  EXPECT_EQ(stream.push("\xe4\xb8"), "");  // the first two bytes of 中
  EXPECT_EQ(stream.push("\xad!"), "中!");
  EXPECT_EQ(stream.push("\xff"
                        "a"),
            "\xef\xbf\xbd"
            "a");  // never valid: U+FFFD at once
  EXPECT_EQ(stream.push("\xf0\x9f"), "");
  EXPECT_EQ(stream.flush(), "\xef\xbf\xbd");  // cut short: one U+FFFD for the cut sequence
  EXPECT_EQ(stream.flush(), "");
}

TEST(Utf8, WhiteSpaceIsUnicodeWhiteSpace) {
  for (const int32_t cp : {0x09, 0x0A, 0x0D, 0x20, 0x85, 0xA0, 0x2028, 0x3000})
    EXPECT_TRUE(is_white_space(cp)) << cp;
  for (const int32_t cp : {0x180E, 0xFEFF, 0x200B, 0x61, 0}) EXPECT_FALSE(is_white_space(cp)) << cp;
  EXPECT_EQ(valid_utf8_prefix("abcdefghij\xffk"), 10u);
  EXPECT_EQ(valid_utf8_prefix("中文"), 6u);
}

// `dsmoe tokenize`: one answer per line, bad lines answered with an error and the rest go on.
TEST(TokenizeCli, AnswersEachJsonLine) {
  TempDir dir;
  const json chat = read_jsonl(kV3Dir + "/chat.jsonl")[0];
  const json chat_line = {{"messages", chat["messages"]},
                          {"add_generation_prompt", chat["add_generation_prompt"]}};
  write_text(dir / "input.jsonl",
             "{\"text\": \"Hello, world! This is a simple sentence.\"}\n"
             "not json\n"
             "{\"text\": 5}\n" +
                 chat_line.dump() +
                 "\n"
                 "{\"nothing\": 1}\n"
                 "\n"
                 "{\"text\": \"<｜User｜>2+2\", \"add_special_tokens\": true}\n");
  const std::string command = std::string(DSMOE_CLI) + " tokenize --tokenizer " + kV3Dir + " < " +
                              (dir / "input.jsonl") + " > " + (dir / "output.jsonl") + " 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << read_bytes(dir / "output.jsonl");
  const std::vector<json> out = read_jsonl(dir / "output.jsonl");
  ASSERT_EQ(out.size(), 7u);
  const json first = read_jsonl(kV3Dir + "/cases.jsonl")[0];
  for (const char* field : {"ids", "ids_with_special", "tokens", "decoded"})
    EXPECT_EQ(out[0][field], first[field]) << field;
  EXPECT_NE(out[1]["error"].get<std::string>().find("line 2: not valid JSON"), std::string::npos);
  EXPECT_NE(out[2]["error"].get<std::string>().find("line 3: \"text\" must be a string"),
            std::string::npos);
  EXPECT_EQ(out[3]["rendered"], chat["rendered"]) << out[3].dump();
  EXPECT_EQ(out[3]["ids"], chat["ids"]);
  EXPECT_NE(out[4]["error"].get<std::string>().find("line 5: expected"), std::string::npos);
  EXPECT_TRUE(out[5].contains("error"));
  EXPECT_EQ(out[6]["ids"], json({0, 128803, 20, 13, 20}));
  EXPECT_EQ(out[6]["ids_with_special"], out[6]["ids"]);
  EXPECT_EQ(out[6]["decoded"], "<｜begin▁of▁sentence｜><｜User｜>2+2");
}

}  // namespace
}  // namespace dsmoe::text
