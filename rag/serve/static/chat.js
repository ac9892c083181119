// The chat page of `rag serve`: streams answers from /v1/chat/completions, lists their sources,
// and keeps the conversation (sent back with each question, as OpenAI clients do).
"use strict";
(function () {
  const log = document.getElementById("log");
  const form = document.getElementById("ask");
  const question = document.getElementById("question");
  const send = document.getElementById("send");
  const keyInput = document.getElementById("apikey");
  let model = null;
  let history = [];

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = keyInput.value || sessionStorage.getItem("rag-api-key") || "";
    if (key) { h.Authorization = "Bearer " + key; sessionStorage.setItem("rag-api-key", key); }
    return h;
  }

  function turn(kind, text) {
    const div = document.createElement("div");
    div.className = "turn " + kind;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    div.appendChild(body);
    log.appendChild(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function sourceHref(source) {
    if (/^https?:\/\//i.test(source)) return source;
    return "file://" + encodeURI(source.startsWith("/") ? source : "/" + source);
  }

  function showSources(div, sources) {
    if (!sources || !sources.length) return;
    const list = document.createElement("ol");
    list.className = "sources";
    for (const s of sources) {
      const item = document.createElement("li");
      item.value = s.number;
      const link = document.createElement("a");
      link.href = sourceHref(s.source);
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = s.title || s.source;
      link.title = s.source;
      item.appendChild(link);
      if (s.score !== null && s.score !== undefined) {
        const score = document.createElement("span");
        score.className = "score";
        score.textContent = " (" + s.score.toFixed(2) + ")";
        item.appendChild(score);
      }
      list.appendChild(item);
    }
    div.appendChild(list);
  }

  async function errorText(response) {
    try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
  }

  async function ask(text) {
    turn("user", text);
    const div = turn("assistant", "");
    const body = div.querySelector(".text");
    const messages = history.concat([{ role: "user", content: text }]);
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify({ model: model, messages: messages, stream: true }),
    });
    if (!response.ok) { div.className = "turn error"; body.textContent = await errorText(response); return; }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", answer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (event === "[DONE]") continue;
        const chunk = JSON.parse(event);
        if (chunk.error) { div.className = "turn error"; body.textContent = chunk.error.message; return; }
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) { answer += delta.content; body.textContent = answer; }
        if (chunk.sources) showSources(div, chunk.sources);
      }
      div.scrollIntoView({ block: "end" });
    }
    body.textContent = answer.trim();
    history = messages.concat([{ role: "assistant", content: answer.trim() }]);
    div.classList.add("done");
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    const text = question.value.trim();
    if (!text) return;
    question.value = "";
    send.disabled = true;
    try { await ask(text); } catch (e) { turn("error", String(e)); }
    finally { send.disabled = false; question.focus(); }
  });
  question.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  document.getElementById("reset").addEventListener("click", function () { history = []; log.textContent = ""; });

  async function start() {
    const health = await fetch("/health").then(r => r.json()).catch(() => ({}));
    if (health.auth) document.getElementById("keyrow").hidden = false;
    const response = await fetch("/v1/models", { headers: headers() });
    if (response.ok) {
      const llm = (await response.json()).data.find(m => m.role === "llm");
      model = llm ? llm.id : null;
      document.getElementById("model").textContent = model || "";
    } else {
      document.getElementById("model").textContent = await errorText(response);
    }
  }
  keyInput.addEventListener("change", start);
  start();
})();
