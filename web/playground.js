// web/playground.js: the gptd playground. Builds the sampling controls, streams completions
// from this server's public /v1/completions (SSE read through fetch, so an API key and proxies
// work), colours each token by the model's probability, and draws, for a selected token, the
// raw distribution (logprobs) against what survived the sampler's filters (the candidates
// extension), plus the next-token distribution at T = 1 against the slider's temperature.
// When the model has a chat template (POST /apply-template answers), a Chat mode keeps a
// conversation and streams each answer from /v1/chat/completions instead.
"use strict";

// The API's sampling parameters: [id, label, input kind, min, max, step, default, help].
// "off" is the value that disables a filter; the request leaves such parameters out.
const PARAMS = [
  ["temperature", "temperature", "range", 0, 2, 0.05, 0.8,
    "Divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 is greedy."],
  ["top_k", "top_k", "number", 0, 4096, 1, 0,
    "Keep only the k most likely tokens (0 = off)."],
  ["top_p", "top_p", "range", 0.01, 1, 0.01, 1,
    "Nucleus: keep the smallest set of tokens whose probabilities add up to p (1 = off)."],
  ["min_p", "min_p", "range", 0, 0.99, 0.01, 0,
    "Drop tokens less likely than min_p times the most likely one (0 = off)."],
  ["repetition_penalty", "repetition_penalty", "range", 0.5, 2, 0.05, 1,
    "Above 1 makes tokens already in the text less likely (1 = off)."],
  ["presence_penalty", "presence_penalty", "range", -2, 2, 0.1, 0,
    "Subtracted once from every token that already appeared (0 = off)."],
  ["frequency_penalty", "frequency_penalty", "range", -2, 2, 0.1, 0,
    "Subtracted per earlier occurrence of a token (0 = off)."],
  ["max_tokens", "max_tokens", "number", 1, 4096, 1, 64,
    "How many tokens to generate at most."],
  ["seed", "seed", "number", 0, 2147483647, 1, "",
    "Fixes the random stream: the same seed and settings give the same text (empty = random)."],
  ["stop", "stop strings", "text", 0, 0, 0, "",
    "Up to 4 strings, separated by |, that end the completion (\\n for a newline)."],
];
const OFF = { top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, presence_penalty: 0,
  frequency_penalty: 0, seed: "", stop: "" };
const N_LOGPROBS = 20; // the API's maximum: the raw distribution shown per token

const $ = (id) => document.getElementById(id);
const state = { controller: null, tokens: [], selected: -1, preview: null, previewTimer: 0,
  model: null, hasChat: false, history: [] };
const isChat = () => state.hasChat && $("mode-chat").checked;

// ---- controls -----------------------------------------------------------------------------

function buildControls() {
  const box = $("params");
  for (const [id, label, kind, min, max, step, def, help] of PARAMS) {
    const row = document.createElement("div");
    row.className = "param";
    const lab = document.createElement("label");
    lab.htmlFor = id;
    lab.textContent = label;
    const input = document.createElement("input");
    input.id = id;
    input.type = kind;
    if (kind !== "text") {
      Object.assign(input, { min, max, step });
    }
    input.value = def;
    input.dataset.default = def;
    input.setAttribute("aria-describedby", id + "-help");
    if (kind === "range") {
      const out = document.createElement("output");
      out.id = id + "-value";
      out.htmlFor = id;
      lab.append(out);
      input.addEventListener("input", () => { out.textContent = input.value; });
      out.textContent = def;
    }
    const p = document.createElement("p");
    p.id = id + "-help";
    p.className = "help";
    p.textContent = help;
    row.append(lab, input, p);
    box.append(row);
  }
  $("temperature").addEventListener("input", drawTemperature);
  $("reset").addEventListener("click", () => {
    for (const [id] of PARAMS) {
      const el = $(id);
      el.value = el.dataset.default;
      el.dispatchEvent(new Event("input"));
    }
  });
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// The request body from the controls; parameters at their "off" value are left out. Chat mode:
// the conversation so far plus the new message, and chat's logprobs flag.
function requestBody() {
  const body = isChat()
    ? { messages: [...state.history, { role: "user", content: $("prompt").value }],
      logprobs: true, top_logprobs: N_LOGPROBS }
    : { prompt: $("prompt").value, logprobs: N_LOGPROBS };
  Object.assign(body, { stream: true, candidates: N_LOGPROBS,
    stream_options: { include_usage: true } });
  if (state.model) body.model = state.model.id;
  for (const [id, , kind] of PARAMS) {
    const raw = $(id).value.trim();
    if (raw === "" || raw === String(OFF[id])) continue;
    if (id === "stop") {
      body.stop = raw.split("|").filter((s) => s !== "").slice(0, 4)
        .map((s) => s.replace(/\\n/g, "\n"));
    } else {
      body[id] = kind === "text" ? raw : Number(raw);
    }
  }
  return body;
}

// ---- server-sent events over fetch ---------------------------------------------------------

// Calls onEvent(json) for each `data:` event until [DONE]; throws on HTTP errors with the
// OpenAI error message.
async function streamCompletion(body, signal, onEvent) {
  const url = body.messages ? "/v1/chat/completions" : "/v1/completions";
  const res = await fetch(url, { method: "POST", headers: headers(),
    body: JSON.stringify(body), signal });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try {
      const j = await res.json();
      if (j.error && j.error.message) msg = res.status + ": " + j.error.message;
    } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue; // ": ping" comments keep the stream alive
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

// ---- generation ----------------------------------------------------------------------------

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function probClass(p) {
  return p >= 0.5 ? "p-high" : p >= 0.1 ? "p-mid" : "p-low";
}

// One generated token (or a chunk of text) as a focusable span.
function addToken(text, info) {
  const i = state.tokens.length;
  state.tokens.push({ text, ...info });
  const span = document.createElement("span");
  span.className = "tok " + (info.prob != null ? probClass(info.prob) : "");
  span.textContent = text;
  span.tabIndex = i === 0 ? 0 : -1;
  span.setAttribute("role", "button");
  span.setAttribute("aria-pressed", "false");
  span.dataset.index = i;
  span.setAttribute("aria-label", JSON.stringify(text) +
    (info.prob != null ? ", probability " + (100 * info.prob).toFixed(1) + "%" : ""));
  $("output").append(span);
}

// A chat chunk: its content delta, token by token from logprobs.content.
function chatChunkTokens(choice) {
  const text = choice.delta && choice.delta.content;
  if (!text) return [];
  const lp = (choice.logprobs && choice.logprobs.content) || [];
  const cands = choice.candidates || [];
  const info = (e, j) => ({ token: e.token, logprob: e.logprob, prob: Math.exp(e.logprob),
    top: e.top_logprobs.map((t) => [t.token, t.logprob]).sort((a, b) => b[1] - a[1]),
    cand: cands[j] || null });
  if (lp.map((e) => e.token).join("") !== text) {
    return [[text, lp.length ? info(lp[lp.length - 1], lp.length - 1) : {}]];
  }
  return lp.map((e, j) => [e.token, info(e, j)]);
}

function chunkTokens(choice) {
  // Usually one token per event; several when held-back text (stop strings) is released.
  const lp = choice.logprobs;
  const cands = choice.candidates || [];
  if (!lp || !lp.tokens || lp.tokens.join("") !== choice.text) {
    const last = lp && lp.tokens && lp.tokens.length ? lp.tokens.length - 1 : -1;
    return [[choice.text, last >= 0 ? tokenInfo(lp, cands, last) : {}]];
  }
  return lp.tokens.map((t, j) => [t, tokenInfo(lp, cands, j)]);
}

function tokenInfo(lp, cands, j) {
  const top = lp.top_logprobs && lp.top_logprobs[j] ? Object.entries(lp.top_logprobs[j]) : [];
  return { token: lp.tokens[j], logprob: lp.token_logprobs[j],
    prob: Math.exp(lp.token_logprobs[j]), top: top.sort((a, b) => b[1] - a[1]),
    cand: cands[j] || null };
}

async function generate() {
  if (state.controller) return;
  const body = requestBody();
  state.tokens = [];
  state.selected = -1;
  const out = $("output");
  out.textContent = "";
  if (isChat()) {
    // The conversation as turns; this answer's tokens go into the last one.
    for (const m of body.messages) {
      const turn = document.createElement("span");
      turn.className = "turn " + m.role;
      turn.textContent = m.role + ": " + m.content + "\n";
      out.append(turn);
    }
    const lead = document.createElement("span");
    lead.className = "turn assistant";
    lead.textContent = "assistant: ";
    out.append(lead);
  } else {
    const pspan = document.createElement("span");
    pspan.className = "prompt";
    pspan.textContent = body.prompt;
    out.append(pspan);
  }
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("stop-run").disabled = false;
  setStatus("Generating…");
  const t0 = performance.now();
  let tFirst = 0, tLast = 0, n = 0, usage = null, finish = null;
  try {
    await streamCompletion(body, state.controller.signal, (ev) => {
      if (ev.usage) usage = ev.usage;
      for (const choice of ev.choices || []) {
        if (choice.finish_reason) finish = choice.finish_reason;
        const pieces = body.messages ? chatChunkTokens(choice) : choice.text ? chunkTokens(choice) : [];
        if (!pieces.length) continue;
        for (const [text, info] of pieces) {
          addToken(text, info);
          n++;
        }
        tLast = performance.now();
        if (!tFirst) tFirst = tLast;
      }
    });
    setStatus("Done" + (finish ? " (" + finish + ")" : "") + ".");
    keepAnswer(body);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("Stopped.");
      keepAnswer(body); // a stopped answer stays in the conversation as far as it got
    } else {
      setStatus(e.message, true);
    }
  } finally {
    state.controller = null;
    $("generate").disabled = false;
    $("stop-run").disabled = true;
  }
  const tokens = usage ? usage.completion_tokens : n;
  const rate = tLast > tFirst && tokens > 1 ? (tokens - 1) / ((tLast - tFirst) / 1000) : 0;
  $("stats").textContent = tFirst
    ? `${tokens} tokens · first token after ${(tFirst - t0).toFixed(0)} ms · ` +
      `${rate.toFixed(1)} tokens/s`
    : "No tokens.";
  out.dataset.done = "true";
  if (state.tokens.length) select(state.tokens.length - 1, false);
}

// Chat: the answer joins the conversation; the box is ready for the next message.
function keepAnswer(body) {
  if (!body.messages) return;
  state.history = [...body.messages,
    { role: "assistant", content: state.tokens.map((t) => t.text).join("") }];
  $("prompt").value = "";
}

function stop() {
  if (state.controller) state.controller.abort(); // closing the stream cancels it on the server
}

// ---- charts --------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  return e;
}
function label(t) {
  const s = JSON.stringify(t).slice(1, -1);
  return s.length > 14 ? s.slice(0, 13) + "…" : s;
}

// Horizontal bars, one row per token: series = [{cls, values[]}] drawn as stacked thin bars.
function barChart(svg, rows, series, opts) {
  svg.textContent = "";
  const rowH = 18, barH = (rowH - 4) / series.length, left = 110, width = 400, right = 50;
  svg.setAttribute("viewBox", `0 0 ${left + width + right} ${rows.length * rowH + 8}`);
  const max = Math.max(1e-9, ...series.flatMap((s) => s.values));
  rows.forEach((r, i) => {
    const y = 4 + i * rowH;
    svg.append(el("text", { x: left - 6, y: y + rowH / 2 + 4, "text-anchor": "end",
      class: r.chosen ? "chosen" : "" }, label(r.token)));
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      svg.append(el("rect", { x: left, y: y + 1 + k * barH, width: Math.max(0, width * v / max),
        height: barH - 1, class: s.cls }));
    });
    const v0 = series[series.length - 1].values[i] || 0;
    svg.append(el("text", { x: left + width + 4, y: y + rowH / 2 + 4 },
      (100 * v0).toFixed(1) + "%"));
  });
  if (opts && opts.cutAfter != null && opts.cutAfter < rows.length - 1) {
    const y = 4 + (opts.cutAfter + 1) * rowH;
    svg.append(el("line", { x1: 0, x2: left + width + right, y1: y, y2: y, class: "cut" }));
    svg.append(el("text", { x: left + width + right - 2, y: y - 3, "text-anchor": "end",
      class: "cut-label" }, "cut"));
  }
}

function select(i, focus) {
  const spans = $("output").querySelectorAll(".tok");
  if (i < 0 || i >= spans.length) return;
  spans.forEach((s) => { s.setAttribute("aria-pressed", "false"); s.tabIndex = -1; });
  spans[i].setAttribute("aria-pressed", "true");
  spans[i].tabIndex = 0;
  if (focus) spans[i].focus();
  state.selected = i;
  drawCandidates(state.tokens[i]);
  drawTemperature();
}

function drawCandidates(t) {
  const svg = $("cand-chart");
  if (!t || !t.top || !t.top.length) {
    svg.textContent = "";
    $("inspect-summary").textContent = "No distribution for this token.";
    return;
  }
  // Rows: the raw top-20, most likely first; the kept probability from the candidates list.
  const kept = new Map();
  if (t.cand) for (const c of t.cand.candidates) kept.set(c.token, c.prob);
  const rows = t.top.map(([token]) => ({ token, chosen: token === t.token }));
  const raw = t.top.map(([, lp]) => Math.exp(lp));
  const after = t.top.map(([token]) => kept.get(token) || 0);
  let last = -1;
  after.forEach((p, k) => { if (p > 0) last = k; });
  svg.dataset.bars = rows.length;
  barChart(svg, rows, [{ cls: "raw", values: raw }, { cls: "kept", values: after }],
    { cutAfter: last >= 0 ? last : null });
  const n = t.cand ? t.cand.n_survivors : null;
  $("inspect-summary").textContent =
    `Chose ${JSON.stringify(t.token)} with probability ${(100 * t.prob).toFixed(1)}%. ` +
    (n != null ? `${n} token${n === 1 ? "" : "s"} survived the filters (the nucleus); ` : "") +
    "grey: the model's distribution, blue: after temperature, penalties and top-k/top-p/min-p.";
}

// The selected step's distribution (or the prompt's next token before any run) at T = 1 and at
// the slider's temperature, renormalised over the top 20.
function drawTemperature() {
  const t = state.selected >= 0 ? state.tokens[state.selected] : state.preview;
  const svg = $("temp-chart");
  if (!t || !t.top || !t.top.length) return;
  const T = Number($("temperature").value);
  const lps = t.top.map(([, lp]) => lp);
  const soft = (temp) => {
    if (temp === 0) return lps.map((_, k) => (k === 0 ? 1 : 0));
    const m = Math.max(...lps);
    const e = lps.map((lp) => Math.exp((lp - m) / temp));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((x) => x / s);
  };
  const rows = t.top.slice(0, 12).map(([token]) => ({ token, chosen: token === t.token }));
  barChart(svg, rows, [{ cls: "t1", values: soft(1).slice(0, 12) },
    { cls: "tx", values: soft(T).slice(0, 12) }]);
  $("temp-summary").textContent = (state.selected >= 0 ? "The selected step's" :
    "The prompt's next-token") + ` distribution at T = 1 (grey) and T = ${T} (blue), ` +
    "over its 20 most likely tokens.";
}

// A one-token greedy request for the prompt's next-token distribution (the temperature chart
// before any run). Debounced while typing.
function schedulePreview() {
  clearTimeout(state.previewTimer);
  if (isChat()) return; // the preview is of a raw prompt's next token
  state.previewTimer = setTimeout(async () => {
    const body = { prompt: $("prompt").value, max_tokens: 1, temperature: 0,
      logprobs: N_LOGPROBS, stream: true };
    if (!body.prompt) return;
    try {
      await streamCompletion(body, undefined, (ev) => {
        const c = ev.choices && ev.choices[0];
        if (c && c.logprobs && c.logprobs.tokens && c.logprobs.tokens.length) {
          state.preview = tokenInfo(c.logprobs, [], 0);
        }
      });
      if (state.selected < 0) drawTemperature();
    } catch (e) { /* the status line reports errors of real runs */ }
  }, 400);
}

// Chat mode exists when the model has a chat template: /apply-template answers 200.
async function probeChat() {
  try {
    const res = await fetch("/apply-template", { method: "POST", headers: headers(),
      body: JSON.stringify({ messages: [{ role: "user", content: "hi" }] }) });
    state.hasChat = res.ok;
  } catch (e) {
    state.hasChat = false;
  }
  $("mode").hidden = !state.hasChat;
}

function setMode() {
  const chat = isChat();
  $("prompt-label").textContent = chat ? "Your message" : "Prompt";
  $("new-chat").hidden = !chat;
  $("completion-title").textContent = chat ? "Conversation" : "Completion";
  if (chat && $("prompt").value === $("prompt").dataset.example) $("prompt").value = "Hello!";
}

function newChat() {
  state.history = [];
  $("output").textContent = "";
  setStatus("New conversation.");
}

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    if (res.status === 401) {
      $("model-info").textContent = "This server needs an API key (Connection, below).";
      return;
    }
    const j = await res.json();
    state.model = j.data[0];
    $("model-info").textContent = `Model ${state.model.id} · context ${state.model.max_model_len} tokens`;
    $("max_tokens").max = state.model.max_model_len;
    await probeChat();
    schedulePreview();
  } catch (e) {
    $("model-info").textContent = "Cannot reach the server: " + e.message;
  }
}

// ---- wiring --------------------------------------------------------------------------------

function init() {
  buildControls();
  $("generate").addEventListener("click", generate);
  $("stop-run").addEventListener("click", stop);
  $("prompt").addEventListener("input", schedulePreview);
  $("prompt").dataset.example = $("prompt").value;
  $("mode-chat").addEventListener("change", setMode);
  $("mode-completion").addEventListener("change", setMode);
  $("new-chat").addEventListener("click", newChat);
  $("api-key").addEventListener("change", loadModel);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") stop();
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && e.target === $("prompt")) generate();
  });
  const out = $("output");
  out.addEventListener("click", (e) => {
    const s = e.target.closest(".tok");
    if (s) select(Number(s.dataset.index), false);
  });
  out.addEventListener("keydown", (e) => {
    const s = e.target.closest(".tok");
    if (!s) return;
    const i = Number(s.dataset.index);
    if (e.key === "Enter" || e.key === " ") { select(i, false); e.preventDefault(); }
    if (e.key === "ArrowRight") { select(i + 1, true); e.preventDefault(); }
    if (e.key === "ArrowLeft") { select(i - 1, true); e.preventDefault(); }
  });
  loadModel();
}

init();
