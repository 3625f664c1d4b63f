// tests/web/test_playground.mjs: the playground in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser download) against a running `gptd serve`.
//
//   node test_playground.mjs BASE_URL SCREENSHOT_DIR CLI_GREEDY_TEXT
//
// Checks: the page loads and names the served model; with temperature 0 (set from the keyboard)
// and max_tokens 8 the streamed text equals the API's non-streamed greedy text (and that of
// `gptd generate` for the same prompt); a selected token
// has a candidate chart with bars and the arrow keys move the selection; Stop during a long run
// aborts it and the server's running count drops to 0 (/metrics); every control has a label;
// a phone-sized viewport has no horizontal scrolling; chat mode (the server has a
// --chat-template): its greedy answer equals the API's and the next message carries the
// conversation. Screenshots go to SCREENSHOT_DIR.
import { chromium } from "playwright-core";

const [base, shotDir, cliGreedy] = process.argv.slice(2);
let failures = 0;
function check(cond, what) {
  console.log((cond ? "ok   " : "FAIL ") + what);
  if (!cond) failures++;
}

async function metric(name) {
  const text = await (await fetch(base + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.split(" ").pop()) : NaN;
}

async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return true;
    if (Date.now() > end) {
      console.log("  (timed out waiting for " + what + ")");
      return false;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"], headless: true });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const consoleErrors = [];
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  await page.goto(base + "/");
  const models = await (await fetch(base + "/v1/models")).json();
  const modelId = models.data[0].id;
  await page.waitForFunction((id) => document.getElementById("model-info").textContent.includes(id),
    modelId, { timeout: 10000 });
  check(true, "the page loads and shows the model " + modelId);

  // Every control has a label a screen reader can announce.
  const unlabelled = await page.$$eval("input, textarea, button",
    (els) => els.filter((e) => !(e.labels && e.labels.length) && !e.textContent.trim())
      .map((e) => e.id));
  check(unlabelled.length === 0, "every control has a label (" + unlabelled.join(",") + ")");

  // Greedy run: temperature to 0 with the keyboard (Home on the slider), max_tokens 8.
  const prompt = "The cat sat on the";
  await page.fill("#prompt", prompt);
  await page.focus("#temperature");
  await page.keyboard.press("Home");
  check(await page.inputValue("#temperature") === "0", "Home on the temperature slider sets 0");
  await page.fill("#max_tokens", "8");
  await page.click("#generate");
  await page.waitForSelector("#output[data-done=true]", { timeout: 20000 });
  const streamed = await page.$$eval("#output .tok", (s) => s.map((x) => x.textContent).join(""));
  const api = await (await fetch(base + "/v1/completions", { method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt, max_tokens: 8, temperature: 0 }) })).json();
  check(streamed === api.choices[0].text && streamed.length > 0,
    `streamed text ${JSON.stringify(streamed)} equals the API's greedy text ` +
    JSON.stringify(api.choices[0].text));
  check(streamed === cliGreedy, "it also equals `gptd generate`'s greedy text " +
    JSON.stringify(cliGreedy));
  check(/first token after \d+ ms/.test(await page.textContent("#stats")),
    "time to first token and tokens/s are shown: " + await page.textContent("#stats"));

  // Select a token: its candidate chart has bars; arrow keys move the selection.
  await page.click("#output .tok >> nth=0");
  const bars = await page.$$eval("#cand-chart rect", (r) => r.filter((x) => +x.getAttribute("width") > 0).length);
  check(bars > 0, `the first token's candidate chart has ${bars} bars`);
  check(/survived the filters/.test(await page.textContent("#inspect-summary")),
    "the nucleus size is shown: " + (await page.textContent("#inspect-summary")).slice(0, 80));
  const tempBars = await page.$$eval("#temp-chart rect", (r) => r.length);
  check(tempBars > 0, `the temperature chart has ${tempBars} bars`);
  await page.focus("#output .tok >> nth=0");
  await page.keyboard.press("ArrowRight");
  check(await page.getAttribute("#output .tok >> nth=1", "aria-pressed") === "true",
    "ArrowRight selects the next token");
  await page.screenshot({ path: shotDir + "/playground.png", fullPage: true });

  // Stop during a long run: the request is cancelled on the server.
  await page.focus("#temperature");
  await page.keyboard.press("End");
  await page.fill("#max_tokens", "900");
  await page.click("#generate");
  const started = await until(async () => (await metric("gptd_requests_running")) >= 1 &&
    (await page.$$eval("#output .tok", (s) => s.length)) >= 3, 15000, "a running request");
  check(started, "a long generation is running and streaming");
  const cancelledBefore = await metric("gptd_requests_cancelled_total");
  await page.click("#stop-run");
  const drained = await until(async () => (await metric("gptd_requests_running")) === 0, 5000,
    "running = 0");
  check(drained, "after Stop the server's running count drops to 0");
  check(await metric("gptd_requests_cancelled_total") > cancelledBefore,
    "the server counts the request as cancelled");
  await page.waitForFunction(() => document.getElementById("status").textContent === "Stopped.");
  const n = await page.$$eval("#output .tok", (s) => s.length);
  check(n < 900, `the page shows Stopped. after ${n} of 900 tokens`);

  // Chat mode (the server runs with a ChatML --chat-template): greedy, its answer equals the
  // API's; the next message carries the conversation.
  await page.setViewportSize({ width: 1400, height: 900 });
  check(await page.isVisible("#mode"), "the model has a chat template: the mode switch is shown");
  await page.check("#mode-chat");
  check(await page.textContent("#prompt-label") === "Your message", "chat mode relabels the box");
  await page.focus("#temperature");
  await page.keyboard.press("Home");
  await page.fill("#max_tokens", "6");
  await page.fill("#prompt", "Hello there");
  await page.click("#generate");
  await page.waitForFunction(() => /^Done/.test(document.getElementById("status").textContent),
    null, { timeout: 20000 });
  const answer = await page.$$eval("#output .tok", (s) => s.map((x) => x.textContent).join(""));
  const chatApi = await (await fetch(base + "/v1/chat/completions", { method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Hello there" }], max_tokens: 6,
      temperature: 0 }) })).json();
  check(answer.length > 0 && answer === chatApi.choices[0].message.content,
    `the chat answer ${JSON.stringify(answer)} equals the API's ` +
    JSON.stringify(chatApi.choices[0].message.content));
  check(await page.inputValue("#prompt") === "", "the message box is emptied for the next turn");
  await page.fill("#prompt", "And again");
  await page.click("#generate");
  await page.waitForFunction(() => /^Done/.test(document.getElementById("status").textContent) &&
    document.querySelectorAll("#output .turn").length === 4, null, { timeout: 20000 });
  const turns = await page.$$eval("#output .turn", (t) => t.map((x) => x.className));
  check(JSON.stringify(turns) === JSON.stringify(["turn user", "turn assistant", "turn user",
    "turn assistant"]), "the second message is sent with the conversation: " + turns.join(","));
  await page.click("#new-chat");
  check((await page.$$eval("#output .turn", (t) => t.length)) === 0, "New chat clears it");
  await page.check("#mode-completion");

  // A phone: one column, no horizontal scrolling.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling at 390 px (overflow ${overflow} px)`);
  await page.screenshot({ path: shotDir + "/playground-phone.png", fullPage: true });

  check(consoleErrors.length === 0, "no errors in the browser console " + consoleErrors.join(" | "));
} finally {
  await browser.close();
}
if (failures) {
  console.log(failures + " check(s) failed");
  process.exit(1);
}
console.log("all checks passed");
