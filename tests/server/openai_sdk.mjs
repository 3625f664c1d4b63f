// openai_sdk.mjs: the official OpenAI Node SDK against `gptd serve` (run by
// test_openai_sdk.sh with NODE_PATH pointing at an `openai` install under build/).
// Usage: node openai_sdk.mjs BASE_URL API_KEY MODEL
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
let failed = 0;
const check = (ok, what) => {
  if (!ok) {
    console.log(`FAIL ${what}`);
    failed = 1;
  } else {
    console.log(`ok   ${what}`);
  }
};

const args = { model, prompt: "Hello, world", max_tokens: 8, temperature: 0 };
const plain = await client.completions.create(args);
check(plain.object === "text_completion" && plain.id.startsWith("cmpl-"), "non-streaming object");
check(typeof plain.choices[0].text === "string" && plain.choices[0].finish_reason === "length",
      "non-streaming choice");
check(plain.usage.completion_tokens === 8, "non-streaming usage");

const stream = await client.completions.create({
  ...args, stream: true, stream_options: { include_usage: true } });
let text = "";
let usage = null;
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    text += c.text;
  }
  if (chunk.usage) {
    usage = chunk.usage;
  }
}
check(text === plain.choices[0].text, `streamed text equals non-streamed (${JSON.stringify(text)})`);
check(usage !== null && usage.completion_tokens === 8, "streamed usage chunk");

try {
  await client.completions.create({ model, prompt: "Hello", temperature: 5 });
  check(false, "temperature 5 raises");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.code === "invalid_value" &&
        e.param === "temperature", `BadRequestError (${e.status} ${e.code} ${e.param})`);
}
try {
  const bad = new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 });
  await bad.completions.create(args);
  check(false, "a wrong key raises");
} catch (e) {
  check(e instanceof OpenAI.AuthenticationError && e.status === 401, `AuthenticationError (${e.status})`);
}
// Chat: the server runs with a ChatML template (--chat-template).
const messages = [
  { role: "system", content: "You are a test." },
  { role: "user", content: "Hello there" },
];
const chatArgs = { model, messages, max_tokens: 6, temperature: 0.8, seed: 7 };
const chat = await client.chat.completions.create({ ...chatArgs, logprobs: true, top_logprobs: 2 });
check(chat.object === "chat.completion" && chat.id.startsWith("chatcmpl-"), "chat object");
const msg = chat.choices[0].message;
check(msg.role === "assistant" && typeof msg.content === "string", "chat message");
check(chat.choices[0].finish_reason === "length" && chat.usage.completion_tokens === 6,
      "chat finish_reason and usage");
const lp = chat.choices[0].logprobs?.content ?? [];
check(lp.length === 6 && lp.every((t) => typeof t.token === "string" &&
      typeof t.logprob === "number" && Array.isArray(t.bytes) && t.top_logprobs.length === 2),
      "chat logprobs.content");

const chatStream = await client.chat.completions.create({
  ...chatArgs, stream: true, stream_options: { include_usage: true } });
let content = "";
let role = null;
let finish = null;
let chatUsage = null;
let allChunks = true;
for await (const chunk of chatStream) {
  allChunks &&= chunk.object === "chat.completion.chunk";
  for (const c of chunk.choices) {
    if (c.delta.role) {
      role = c.delta.role;
    }
    content += c.delta.content ?? "";
    if (c.finish_reason) {
      finish = c.finish_reason;
    }
  }
  if (chunk.usage) {
    chatUsage = chunk.usage;
  }
}
check(allChunks, "every chunk is a chat.completion.chunk");
check(role === "assistant" && finish === "length", "streamed chat: role first, finish_reason last");
check(content === msg.content, `streamed chat content equals non-streamed (${JSON.stringify(content)})`);
check(chatUsage !== null && chatUsage.completion_tokens === 6, "streamed chat usage");

try {
  await client.chat.completions.create({ model, messages: [] });
  check(false, "empty messages raise");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "messages",
        `chat BadRequestError (${e.status} ${e.param})`);
}
process.exit(failed);
