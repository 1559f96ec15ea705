// Ember's chat page: plain JS, no build step. Model text only ever reaches the DOM as text
// (textContent / text nodes), never as HTML.
"use strict";

const KEY_STORAGE = "ember.apiKey";
const SETTINGS_STORAGE = "ember.chatSettings";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  newChat: $("new-chat"),
  keyForm: $("key-form"),
  keyReason: $("key-reason"),
  apiKey: $("api-key"),
  changeKey: $("change-key"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  systemPrompt: $("system-prompt"),
  error: $("error"),
  transcript: $("transcript"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

const chat = { history: [], controller: null, session: 0 };

// -- storage (localStorage can be unavailable, e.g. with storage blocked) --------------------

function load(name) {
  try {
    return window.localStorage.getItem(name);
  } catch {
    return null;
  }
}

function store(name, value) {
  try {
    if (value === null || value === "") window.localStorage.removeItem(name);
    else window.localStorage.setItem(name, value);
  } catch {
    // Not fatal: the value lasts until the page reloads.
  }
}

let apiKey = load(KEY_STORAGE) || "";

function saveSettings() {
  store(SETTINGS_STORAGE, JSON.stringify({
    model: ui.model.value,
    temperature: ui.temperature.value,
    maxTokens: ui.maxTokens.value,
    systemPrompt: ui.systemPrompt.value,
  }));
}

function restoreSettings() {
  let saved = {};
  try {
    saved = JSON.parse(load(SETTINGS_STORAGE) || "{}") || {};
  } catch {
    saved = {};
  }
  if (typeof saved.temperature === "string") ui.temperature.value = saved.temperature;
  if (typeof saved.maxTokens === "string") ui.maxTokens.value = saved.maxTokens;
  if (typeof saved.systemPrompt === "string") ui.systemPrompt.value = saved.systemPrompt;
  return typeof saved.model === "string" ? saved.model : "";
}

// -- errors and the key prompt -------------------------------------------------------------

function oneLine(text) {
  return String(text).replace(/\s+/g, " ").trim();
}

function showError(message) {
  ui.error.textContent = oneLine(message);
  ui.error.title = ui.error.textContent;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

function askForKey(reason) {
  ui.keyReason.textContent = reason;
  ui.apiKey.value = apiKey;
  ui.keyForm.hidden = false;
  ui.apiKey.focus();
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    const detail = body && (body.error ? body.error.message || body.error : body.detail);
    if (detail) message = `${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  } catch {
    // Not JSON: the status line says enough.
  }
  return new HttpError(response.status, message);
}

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  return headers;
}

function onUnauthorized() {
  askForKey(apiKey ? "The server refused this API key; enter the right one." : "This server needs an API key.");
}

// -- models ----------------------------------------------------------------------------------

async function loadModels(preferred) {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (err) {
    showError(`cannot reach the server: ${err.message}`);
    return;
  }
  if (response.status === 401) {
    onUnauthorized();
    return;
  }
  if (!response.ok) {
    showError(`listing models failed: ${(await errorFrom(response)).message}`);
    return;
  }
  const models = ((await response.json()).data || []).map((card) => card.id);
  ui.model.replaceChildren(...models.map((id) => new Option(id, id)));
  if (models.includes(preferred)) ui.model.value = preferred;
  if (models.length === 0) showError("the server lists no models");
  else clearError();
  ui.keyForm.hidden = true;
}

// -- transcript ------------------------------------------------------------------------------

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  box.append(label, content);
  ui.transcript.append(box);
  scrollDown();
  return { box, content };
}

function scrollDown() {
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

function formatStats(timing, tokens, outcome) {
  const parts = [`${tokens} token${tokens === 1 ? "" : "s"}`];
  if (timing.first !== null) {
    const end = timing.end;
    // Decode speed: the tokens after the first over the time after the first; with a single
    // token, that token over the whole wait.
    const seconds = tokens > 1 ? (end - timing.first) / 1000 : (end - timing.start) / 1000;
    const counted = tokens > 1 ? tokens - 1 : tokens;
    if (seconds > 0) parts.push(`${(counted / seconds).toFixed(1)} tokens/s`);
    parts.push(`TTFT ${Math.round(timing.first - timing.start)} ms`);
  }
  if (outcome) parts.push(outcome);
  return parts.join(" · ");
}

// -- streaming -------------------------------------------------------------------------------

// Yields the data of each server-sent event in the response body.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function requestBody() {
  const messages = [];
  const system = ui.systemPrompt.value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...chat.history);
  const body = {
    model: ui.model.value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens) && maxTokens > 0) body.max_tokens = maxTokens;
  return body;
}

async function send() {
  const text = ui.prompt.value;
  if (chat.controller || !text.trim()) return;
  if (!ui.model.value) {
    showError("no model selected (the model list did not load)");
    return;
  }
  clearError();
  saveSettings();
  ui.prompt.value = "";
  chat.history.push({ role: "user", content: text });
  const userMessage = addMessage("user", text);
  const answer = addMessage("assistant", "");
  answer.box.dataset.state = "streaming";
  const stats = document.createElement("div");
  stats.className = "stats";
  answer.box.append(stats);

  const controller = new AbortController();
  chat.controller = controller;
  const session = chat.session;
  setBusy(true);
  const timing = { start: performance.now(), first: null, end: null };
  let reply = "";
  let pieces = 0;
  let usageTokens = null;
  let outcome = "";
  let failure = null;
  let started = false;

  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders(),
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    started = true;
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (timing.first === null) timing.first = performance.now();
        pieces += 1;
        reply += piece;
        answer.content.append(document.createTextNode(piece));
        scrollDown();
      }
      if (choice.finish_reason && choice.finish_reason !== "stop") outcome = `finish: ${choice.finish_reason}`;
    }
  } catch (err) {
    if (err.name === "AbortError") outcome = "stopped";
    else failure = err;
  } finally {
    timing.end = performance.now();
    chat.controller = null;
    setBusy(false);
  }

  if (session !== chat.session) return; // "New chat" cleared this conversation meanwhile
  if (failure && !started) {
    // Nothing was generated: take the message back so it can be sent again.
    chat.history.pop();
    userMessage.box.remove();
    answer.box.remove();
    if (!ui.prompt.value) ui.prompt.value = text;
    if (failure.status === 401) onUnauthorized();
    showError(failure instanceof HttpError ? failure.message : `request failed: ${failure.message}`);
    return;
  }
  if (failure) {
    showError(`the answer broke off: ${failure.message}`);
    outcome = "error";
  }
  chat.history.push({ role: "assistant", content: reply });
  answer.box.dataset.state = outcome === "stopped" ? "stopped" : failure ? "error" : "done";
  stats.textContent = formatStats(timing, usageTokens !== null ? usageTokens : pieces, outcome);
  scrollDown();
}

function stop() {
  if (chat.controller) chat.controller.abort();
}

function newChat() {
  stop();
  chat.session += 1;
  chat.history = [];
  ui.transcript.replaceChildren();
  clearError();
  ui.prompt.focus();
}

// -- wiring ----------------------------------------------------------------------------------

ui.send.addEventListener("click", send);
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = ui.apiKey.value.trim();
  store(KEY_STORAGE, apiKey);
  loadModels(ui.model.value);
});
ui.changeKey.addEventListener("click", () => askForKey("API key for this server (kept in this browser)."));
for (const input of [ui.model, ui.temperature, ui.maxTokens, ui.systemPrompt]) {
  input.addEventListener("change", saveSettings);
}

loadModels(restoreSettings());
