// test_scheduler.cpp: the serving loop (runtime/scheduler.h) on the v3-tiny fixture with the
// byte-level codec: a greedy request's output alone equals its output among 24 others,
// cancellation frees a sequence at once, stop strings, max_tokens, the context limit, the queue
// limit, the loop on its own thread; and the UTF-8 assembly of streamed bytes.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "model/transformer.h"
#include "runtime/scheduler.h"
#include "runtime/text_codec.h"
#include "test_util.h"
#include "text/utf8.h"
#include "util/check.h"

namespace dsmoe {
namespace {

const Model& tiny_model() {
  static const Model model = Model::load(std::string(DSMOE_TEST_DATA) + "/v3-tiny/model");
  return model;
}

GenerationRequest request_for(const std::string& prompt, int64_t max_tokens,
                              float temperature = 0.0f, uint64_t seed = 0) {
  GenerationRequest request;
  request.prompt.assign(prompt.begin(), prompt.end());
  request.max_tokens = max_tokens;
  request.sampling.temperature = temperature;
  request.sampling.seed = seed;
  return request;
}

struct Output {
  std::string text;
  std::vector<int64_t> tokens;
  FinishReason finish = FinishReason::kNone;
};

// Everything a stream has handed over so far.
void drain(SequenceStream& stream, Output* output) {
  StreamUpdate update;
  while (stream.wait_update(&update, std::chrono::milliseconds(0))) {
    output->text += update.text;
    output->tokens.insert(output->tokens.end(), update.tokens.begin(), update.tokens.end());
    if (update.finish != FinishReason::kNone) output->finish = update.finish;
  }
}

Output run_alone(const GenerationRequest& request) {
  ByteCodec codec(tiny_model().config());
  Scheduler scheduler(tiny_model(), codec, {.max_concurrent = 1, .prefill_chunk = 8});
  std::shared_ptr<SequenceStream> stream = scheduler.submit(request);
  Output output;
  while (scheduler.step()) drain(*stream, &output);
  drain(*stream, &output);
  return output;
}

TEST(Scheduler, GreedyOutputAloneEqualsAmong24Others) {
  const GenerationRequest target = request_for("The quick brown fox jumps", 20);
  const Output alone = run_alone(target);
  ASSERT_EQ(alone.tokens.size(), 20u);
  EXPECT_EQ(alone.finish, FinishReason::kLength);

  ByteCodec codec(tiny_model().config());
  Scheduler scheduler(tiny_model(), codec, {.max_concurrent = 25, .prefill_chunk = 8});
  std::vector<std::shared_ptr<SequenceStream>> others;
  for (int i = 0; i < 24; i++) {
    // Prompts of 3 to 49 tokens (several prefill chunks), greedy and sampled, and different
    // lengths, so that the batch changes while the target runs.
    const std::string prompt = fmt::format("{}:{}", i, std::string(i * 2 + 1, 'a' + i % 26));
    others.push_back(scheduler.submit(request_for(prompt, 5 + i % 13, i % 3 ? 0.8f : 0.0f, i)));
    if (i == 11) {
      scheduler.step();
      scheduler.step();
    }
  }
  std::shared_ptr<SequenceStream> stream = scheduler.submit(target);
  Output among;
  while (scheduler.step()) drain(*stream, &among);
  drain(*stream, &among);
  EXPECT_EQ(among.tokens, alone.tokens);
  EXPECT_EQ(among.text, alone.text);
  for (const auto& other : others) EXPECT_TRUE(other->finished());
}

TEST(Scheduler, CancellationFreesTheSequenceAtTheNextStep) {
  ByteCodec codec(tiny_model().config());
  Scheduler scheduler(tiny_model(), codec, {.max_concurrent = 2, .prefill_chunk = 8});
  auto first = scheduler.submit(request_for("first", 100));
  auto second = scheduler.submit(request_for("second", 100));
  auto queued = scheduler.submit(request_for("queued", 100));
  scheduler.step();
  scheduler.step();
  EXPECT_EQ(scheduler.n_running(), 2);
  EXPECT_EQ(scheduler.n_waiting(), 1);
  first->cancel();
  scheduler.step();  // frees `first`, admits `queued`
  EXPECT_TRUE(first->finished());
  EXPECT_EQ(scheduler.n_running(), 2);
  EXPECT_EQ(scheduler.n_waiting(), 0);
  Output output;
  drain(*first, &output);
  EXPECT_EQ(output.finish, FinishReason::kCancelled);
  // A waiting request cancelled before it runs never takes a slot.
  auto waiting = scheduler.submit(request_for("never runs", 10));
  waiting->cancel();
  scheduler.step();
  EXPECT_TRUE(waiting->finished());
  EXPECT_EQ(waiting->completion_tokens(), 0);
  second->cancel();
  queued->cancel();
  EXPECT_FALSE(scheduler.step());
  EXPECT_EQ(scheduler.n_running(), 0);
}

TEST(Scheduler, StopStringEndsTheTextBeforeIt) {
  const Output full = run_alone(request_for("Once upon a time", 40));
  // A stop string from the middle of the greedy text: its 4th and 5th characters (the random
  // model's text is mostly U+FFFD).
  size_t at = 0, end = 0;
  for (int i = 0; i < 5; i++) {
    if (i == 3) at = end;
    ASSERT_LT(end, full.text.size());
    text::next_code_point(full.text, &end);
  }
  const std::string stop = full.text.substr(at, end - at);
  GenerationRequest request = request_for("Once upon a time", 40);
  request.stop = {"never appears in this text", stop};
  const Output stopped = run_alone(request);
  EXPECT_EQ(stopped.finish, FinishReason::kStop);
  EXPECT_EQ(stopped.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_LT(stopped.tokens.size(), full.tokens.size());
}

TEST(Scheduler, MaxTokensContextAndQueueLimits) {
  const Output output = run_alone(request_for("count", 5));
  EXPECT_EQ(output.tokens.size(), 5u);
  EXPECT_EQ(output.finish, FinishReason::kLength);

  ByteCodec codec(tiny_model().config());
  Scheduler scheduler(tiny_model(), codec, {.max_concurrent = 1, .max_queue = 2, .ctx_size = 32});
  EXPECT_EQ(scheduler.ctx_size(), 32);
  EXPECT_THROW(scheduler.submit(request_for(std::string(30, 'x'), 3)), Error);  // 33 > 32
  EXPECT_THROW(scheduler.submit(request_for("", 3)), Error);
  EXPECT_THROW(scheduler.submit(request_for("x", 0)), Error);
  GenerationRequest bad_id = request_for("x", 1);
  bad_id.prompt[0] = tiny_model().config().vocab_size;
  EXPECT_THROW(scheduler.submit(bad_id), Error);
  EXPECT_NE(scheduler.submit(request_for(std::string(29, 'x'), 3)), nullptr);  // exactly 32
  EXPECT_NE(scheduler.submit(request_for("b", 3)), nullptr);
  EXPECT_EQ(scheduler.submit(request_for("c", 3)), nullptr);  // the queue holds 2
}

TEST(Scheduler, LoopThreadServesConcurrentSubmitters) {
  ByteCodec codec(tiny_model().config());
  const GenerationRequest target = request_for("hello there", 12);
  const Output alone = run_alone(target);
  Scheduler scheduler(tiny_model(), codec, {.max_concurrent = 4, .prefill_chunk = 8});
  scheduler.start();
  std::vector<Output> outputs(8);
  std::vector<std::thread> clients;
  for (int i = 0; i < 8; i++)
    clients.emplace_back([&, i] {
      auto stream = scheduler.submit(i % 2 ? request_for("other", 9, 1.0f, i) : target);
      StreamUpdate update;
      while (outputs[i].finish == FinishReason::kNone)
        if (stream->wait_update(&update, std::chrono::milliseconds(1000))) {
          outputs[i].text += update.text;
          outputs[i].tokens.insert(outputs[i].tokens.end(), update.tokens.begin(),
                                   update.tokens.end());
          outputs[i].finish = update.finish;
        }
    });
  for (std::thread& client : clients) client.join();
  scheduler.stop();
  for (int i = 0; i < 8; i += 2) EXPECT_EQ(outputs[i].tokens, alone.tokens) << i;
  for (int i = 1; i < 8; i += 2) EXPECT_EQ(outputs[i].tokens.size(), 9u) << i;
}

// The byte codec's decoder streams through text::Utf8Stream.
TEST(Utf8Stream, HoldsBackCutSequencesAndReplacesInvalidBytes) {
  text::Utf8Stream assembler;
  EXPECT_EQ(assembler.push("a\xC3"), "a");  // é cut after its first byte
  EXPECT_EQ(assembler.push("\xA9"), "\xC3\xA9");
  EXPECT_EQ(assembler.push("\xE2\x82"), "");  // € in three pieces
  EXPECT_EQ(assembler.push("\xAC!"), "\xE2\x82\xAC!");
  EXPECT_EQ(assembler.push("\xFF"), "\xEF\xBF\xBD");    // never valid
  EXPECT_EQ(assembler.push("\xC3x"), "\xEF\xBF\xBDx");  // a lead byte without its continuation
  EXPECT_EQ(assembler.push("\xF0\x9F"), "");
  EXPECT_EQ(assembler.flush(), "\xEF\xBF\xBD");                       // ended inside a character
  EXPECT_EQ(assembler.push("\xED\xA0"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate: not held
}

TEST(ByteCodec, EncodesBytesAndRendersChat) {
  ByteCodec codec(tiny_model().config());
  EXPECT_EQ(codec.encode("A\xC3\xA9"), (std::vector<int64_t>{65, 0xC3, 0xA9}));
  const nlohmann::json messages = {{{"role", "system"}, {"content", "Be brief."}},
                                   {{"role", "user"}, {"content", "Hi"}}};
  EXPECT_EQ(codec.render_chat(messages, true),
            "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n");
  auto decoder = codec.decoder();
  EXPECT_EQ(decoder->push('o') + decoder->push(300) + decoder->push('k'), "o\xEF\xBF\xBDk");
  EXPECT_TRUE(codec.stop_ids().empty());  // the fixture's eos (1) is a byte
}

}  // namespace
}  // namespace dsmoe
