// tuneforge web chat: plain JavaScript, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];            // the conversation sent with each request: {role, content}
let controller = null;         // AbortController of the reply being streamed

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function status(text) { $("status").textContent = text || ""; }

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "msg " + role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "you" : role === "assistant" ? $("model").value || "assistant" : "error";
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  box.append(who, content);
  if (role === "assistant") {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => copyText(content.textContent, copy));
    box.append(copy);
  }
  $("messages").append(box);
  box.scrollIntoView({ block: "end" });
  return content;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {   // clipboard API needs a secure context; fall back to a hidden textarea
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1200);
}

async function loadModels() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    const select = $("model");
    const previous = localStorage.getItem("tuneforge.model");
    select.replaceChildren();
    for (const m of body.data) {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.parent ? m.id + " (adapter)" : m.id + " (base)";
      select.append(option);
    }
    if (previous && body.data.some((m) => m.id === previous)) select.value = previous;
    if (body.data[0] && body.data[0].max_tokens) $("max-tokens").max = body.data[0].max_tokens;
    status("");
  } catch (e) {
    status("Could not list models (" + e.message + "). Retrying...");
    setTimeout(loadModels, 2000);
  }
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("message").disabled = on;
}

// Reads an OpenAI server-sent-event stream and calls onDelta with each piece of text.
async function readStream(res, onDelta) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const content = addMessage("assistant", "");
  content.classList.add("streaming");
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(history);
  controller = new AbortController();
  busy(true);
  status("generating...");
  let reply = "";
  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: $("model").value,
        messages,
        stream: true,
        temperature: Number($("temperature").value),
        max_tokens: Number($("max-tokens").value),
      }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : res.status + " " + res.statusText);
    }
    const finish = await readStream(res, (piece) => {
      reply += piece;
      content.textContent = reply;
      content.scrollIntoView({ block: "end" });
    });
    status(finish === "length" ? "stopped at max tokens" : "");
  } catch (e) {
    if (e.name === "AbortError") {
      status("stopped");
    } else {
      addMessage("error", e.message);
      status("");
    }
  } finally {
    content.classList.remove("streaming");
    history.push({ role: "assistant", content: reply });
    controller = null;
    busy(false);
    $("message").focus();
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || controller) return;
  $("message").value = "";
  send(text);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
  status("new conversation");
});
$("model").addEventListener("change", () => localStorage.setItem("tuneforge.model", $("model").value));
$("api-key").value = localStorage.getItem("tuneforge.apiKey") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("tuneforge.apiKey", $("api-key").value.trim());
  loadModels();
});
loadModels();
