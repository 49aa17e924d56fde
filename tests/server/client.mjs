// client.mjs BASE_URL API_KEY MODEL: `dsmoe serve` through the real OpenAI client: models,
// completions and chat completions (streaming and not), error statuses, many concurrent
// clients, and a stream aborted by its client.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [origin, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${origin}/v1`, apiKey, maxRetries: 0, timeout: 120000 });
const greedy = { model, temperature: 0 };

async function streamedText(stream, pick) {
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += pick(choice) ?? '';
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  return { text, finish, usage };
}

async function expectStatus(status, promise) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.status, status, String(error));
    assert.ok(error.error?.message, 'an error message in OpenAI shape');
    return true;
  });
}

const models = await client.models.list();
assert.equal(models.data[0].id, model);

// Completions.
const completion = await client.completions.create({ ...greedy, prompt: 'Hello', max_tokens: 8 });
assert.equal(completion.object, 'text_completion');
assert.equal(completion.choices[0].finish_reason, 'length');
assert.deepEqual(completion.usage, { prompt_tokens: 5, completion_tokens: 8, total_tokens: 13 });
const streamed = await streamedText(
  await client.completions.create({ ...greedy, prompt: 'Hello', max_tokens: 8, stream: true }),
  (choice) => choice.text);
assert.equal(streamed.text, completion.choices[0].text);
assert.equal(streamed.finish, 'length');

// Chat.
const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
const chat = await client.chat.completions.create({ ...greedy, messages, max_tokens: 6, seed: 1 });
assert.equal(chat.choices[0].message.role, 'assistant');
assert.equal(chat.usage.completion_tokens, 6);
const chatStreamed = await streamedText(
  await client.chat.completions.create({
    ...greedy, messages, max_tokens: 6, stream: true, stream_options: { include_usage: true },
  }),
  (choice) => choice.delta?.content);
assert.equal(chatStreamed.text, chat.choices[0].message.content);
assert.deepEqual(chatStreamed.usage, chat.usage);
const stopped = await client.completions.create({
  ...greedy, prompt: 'Hello', max_tokens: 8, stop: [completion.choices[0].text.slice(2, 3)],
});
assert.equal(stopped.choices[0].finish_reason, 'stop');
assert.ok(completion.choices[0].text.startsWith(stopped.choices[0].text));

// Errors.
await expectStatus(404, client.completions.create({ model: 'gpt-4', prompt: 'x' }));
await expectStatus(400, client.completions.create({ ...greedy, prompt: 'x', max_tokens: -1 }));
await expectStatus(400, client.completions.create({ ...greedy, prompt: 'x', max_tokens: 1e9 }));
await expectStatus(400, client.completions.create({ ...greedy, prompt: 'x'.repeat(300) }));
await expectStatus(400, client.chat.completions.create({ ...greedy, messages: [] }));
await expectStatus(401, new OpenAI({ baseURL: `${origin}/v1`, apiKey: 'wrong', maxRetries: 0 })
  .models.list());

// Many concurrent clients, half streaming: each gets the answer it gets alone.
const n = 32;
const answers = await Promise.all(Array.from({ length: n }, async (_, i) => {
  if (i % 2) {
    const stream = await client.completions.create({
      ...greedy, prompt: 'Hello', max_tokens: 8, stream: true,
    });
    return (await streamedText(stream, (choice) => choice.text)).text;
  }
  return (await client.completions.create({ ...greedy, prompt: 'Hello', max_tokens: 8 }))
    .choices[0].text;
}));
answers.forEach((text, i) => assert.equal(text, completion.choices[0].text, `client ${i}`));

// A client that aborts its stream: the server frees the sequence and keeps serving.
const controller = new AbortController();
const long = await client.completions.create(
  { ...greedy, prompt: 'Once', max_tokens: 200, stream: true }, { signal: controller.signal });
let chunksBeforeAbort = 0;
try {
  for await (const chunk of long) {  // the client library ends the loop quietly on abort
    assert.ok(chunk);
    chunksBeforeAbort++;
    controller.abort();
  }
} catch (error) {
  assert.equal(error.name, 'APIUserAbortError', String(error));
}
assert.ok(chunksBeforeAbort >= 1);
let running = null;
for (let attempt = 0; attempt < 100 && running !== 0; attempt++) {
  const metrics = await (await fetch(`${origin}/metrics`)).text();
  running = Number(/^dsmoe_running_sequences (\d+)$/m.exec(metrics)[1]);
  if (running !== 0) await new Promise((resolve) => setTimeout(resolve, 100));
}
assert.equal(running, 0, 'the aborted sequence is freed');
assert.equal((await client.completions.create({ ...greedy, prompt: 'Hello', max_tokens: 8 }))
  .choices[0].text, completion.choices[0].text);

console.log(`ok: models, completions, chat, stop, errors, ${n} concurrent clients, abort`);
