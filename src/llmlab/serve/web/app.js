// The chat page: POST /v1/chat/completions with stream: true, read the server-sent events from the response
// body as they arrive (fetch + ReadableStream), append each delta's text to the answer. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // the conversation so far, as OpenAI messages
let modelName = null;
let controller = null;  // aborts the request in flight (the server then cancels its generation)

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    modelName = body.data[0].id;
    $("model").textContent = `${modelName} · context ${body.data[0].max_model_len} tokens`;
  } catch (e) {
    $("model").textContent = `model list failed: ${e.message}`;
  }
}

// Server-sent events: "data: {json}\n\n" per chunk, "data: [DONE]" at the end.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }
}

async function send(text) {
  if (!modelName) await loadModel();
  history.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  const answerText = answer.appendChild(document.createElement("span"));
  answerText.className = "text";
  answer.dataset.state = "streaming";
  const system = $("system").value.trim();
  const body = {
    model: modelName,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top_p"),
    max_tokens: number("max_tokens"),
    seed: number("seed"),
  };
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let content = "", finish = null, usage = null;
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error(err.error ? `${r.status}: ${err.error.message}` : `${r.status} ${r.statusText}`);
    }
    for await (const data of sseData(r)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) {
          content += choice.delta.content;
          answerText.textContent = content;
          $("log").scrollTop = $("log").scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    history.push({ role: "assistant", content });
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else bubble("error", e.message);
    history.push({ role: "assistant", content });
  } finally {
    answer.dataset.state = "done";
    const meta = document.createElement("span");
    meta.className = "meta";
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    meta.textContent = `${finish || "?"} · ${usage ? usage.completion_tokens + " tokens · " : ""}${secs}s`;
    answer.appendChild(meta);
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("chat").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value;
  if (!text.trim() || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("chat").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("log").textContent = "";
});
$("api_key").addEventListener("change", loadModel);
loadModel();
