// kvcache chat: the web UI of kvcache-server. Plain JavaScript, no build step.
//
// The conversation is a tree of messages. Every answer knows the slot (server-side KV sequence) that holds
// the conversation up to it and its index there, so each action maps to one endpoint:
//   send after the newest answer of a slot    -> POST /generate {slot_id}            (continues in place)
//   send after an older answer                -> POST /continue {new_slot: true}     (fork at that message)
//   select a passage, "Branch"                -> POST /v1/chat/branch {reuse_kv}     (fork, quote the passage)
//   select a passage, "Focus"                 -> POST /focus                          (same slot, quote the passage)
//   new chat                                  -> POST /generate                       (new slot)
"use strict";

const state = {
  nodes: new Map(),      // id -> {id, role, content, parent, children, slot, index, label}
  roots: [],             // ids of first messages
  selected: null,        // id of the node new messages follow (null: a new conversation)
  slotHead: new Map(),   // slot id -> id of the newest answer it holds
  nextId: 1,
  busy: false,
};

const $ = (id) => document.getElementById(id);

function params() {
  return {
    temperature: parseFloat($("p-temperature").value) || 0,
    top_p: parseFloat($("p-top-p").value) || 1,
    top_k: parseInt($("p-top-k").value, 10) || 0,
    max_tokens: parseInt($("p-max-tokens").value, 10) || 128,
  };
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("p-api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addNode(role, content, parent, extra = {}) {
  const node = {id: state.nextId++, role, content, parent, children: [], slot: null, index: 0, label: "", ...extra};
  state.nodes.set(node.id, node);
  if (parent === null) state.roots.push(node.id); else state.nodes.get(parent).children.push(node.id);
  return node;
}

function pathTo(id) {
  const path = [];
  for (let n = id === null ? null : state.nodes.get(id); n; n = n.parent === null ? null : state.nodes.get(n.parent)) path.unshift(n);
  return path;
}

// ---------------------------------------------------------------- rendering

function renderMessages() {
  const box = $("messages");
  box.innerHTML = "";
  for (const n of pathTo(state.selected)) box.appendChild(messageElement(n));
  box.scrollTop = box.scrollHeight;
  const sel = state.selected === null ? null : state.nodes.get(state.selected);
  $("composer-context").textContent = sel === null ? "New conversation"
    : sel.slot !== null && state.slotHead.get(sel.slot) !== sel.id ? `Continues from an earlier answer (slot ${sel.slot}): a new branch`
    : sel.slot !== null ? `Continues slot ${sel.slot}` : "";
}

function messageElement(n) {
  const el = document.createElement("div");
  el.className = `message ${n.role}` + (n.streaming ? " streaming" : n.role === "assistant" ? " done" : "") +
                 (n.error ? " error" : "");
  el.dataset.node = n.id;
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = n.role + (n.label ? ` · ${n.label}` : "");
  el.appendChild(role);
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = n.content;
  el.appendChild(body);
  if (n.role === "assistant" && !n.streaming) {
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = n.stats || "";
    if (n.slot !== null) {
      const b = document.createElement("button");
      b.className = "secondary continue-here";
      b.textContent = "continue from here";
      b.onclick = () => select(n.id);
      meta.appendChild(b);
    }
    el.appendChild(meta);
  }
  n.element = body;
  n.box = el;
  return el;
}

function renderTree() {
  const onPath = new Set(pathTo(state.selected).map((n) => n.id));
  const build = (ids) => {
    const ul = document.createElement("ul");
    for (const id of ids) {
      const n = state.nodes.get(id);
      const li = document.createElement("li");
      const span = document.createElement("span");
      span.className = "node" + (onPath.has(id) ? " on-path" : "") + (id === state.selected ? " selected" : "");
      span.dataset.node = id;
      span.title = n.content;
      span.innerHTML = (n.label ? `<span class="tag">${n.label}</span>` : "") +
                       `<span class="who ${n.role}">${n.role === "user" ? "you" : "bot"}</span>`;
      span.appendChild(document.createTextNode(n.content.slice(0, 60) || "…"));
      span.onclick = () => select(n.role === "user" ? n.parent : id);
      li.appendChild(span);
      if (n.children.length) li.appendChild(build(n.children));
      ul.appendChild(li);
    }
    return ul;
  };
  const tree = $("tree");
  tree.innerHTML = "";
  tree.appendChild(build(state.roots));
}

function select(id) {
  if (state.busy) return;
  state.selected = id;
  renderMessages();
  renderTree();
  $("prompt").focus();
}

// ---------------------------------------------------------------- server calls

async function streamCompletion(url, body, onPiece) {
  const res = await fetch(url, {method: "POST", headers: headers(), body: JSON.stringify({...body, stream: true})});
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", last = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;   // ": keep-alive" comments
      const data = event.slice(6);
      if (data === "[DONE]") return last;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      last = chunk;
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta ? chunk.choices[0].delta.content : null;
      if (piece) onPiece(piece, chunk);
    }
  }
  return last;
}

async function run(url, body, userNode, answerIndex) {
  state.busy = true;
  $("send").disabled = true;
  const answer = addNode("assistant", "", userNode.id, {streaming: true, index: answerIndex});
  state.selected = answer.id;
  renderMessages();
  renderTree();
  try {
    const last = await streamCompletion(url, {...params(), ...body}, (piece) => {
      answer.content += piece;
      answer.element.textContent = answer.content;
      $("messages").scrollTop = $("messages").scrollHeight;
    });
    answer.slot = last.slot_id;
    state.slotHead.set(last.slot_id, answer.id);
    const t = last.timings || {}, u = last.usage || {};
    const cached = u.prompt_tokens_details ? u.prompt_tokens_details.cached_tokens : 0;
    answer.stats = `slot ${last.slot_id} · ${u.completion_tokens} tokens · ${(t.predicted_per_second || 0).toFixed(1)} tok/s · ` +
                   `prompt ${u.prompt_tokens} tokens, ${cached} reused · first token ${(t.time_to_first_token_ms || 0).toFixed(0)} ms`;
    $("last-speed").textContent = `last answer: ${(t.predicted_per_second || 0).toFixed(1)} tok/s, ${cached}/${u.prompt_tokens} prompt tokens reused`;
  } catch (e) {
    answer.content += (answer.content ? "\n" : "") + "[error] " + e.message;
    answer.error = true;
  } finally {
    answer.streaming = false;
    state.busy = false;
    $("send").disabled = false;
    renderMessages();
    renderTree();
    refreshSlots();
  }
}

function send(text) {
  const sel = state.selected === null ? null : state.nodes.get(state.selected);
  const user = addNode("user", text, sel ? sel.id : null);
  if (!sel || sel.slot === null) {
    if (sel) { user.parent = null; sel.children.pop(); state.roots.push(user.id); }   // a failed answer: start over
    return run("/generate", {prompt: text}, user, 1);
  }
  if (state.slotHead.get(sel.slot) === sel.id) return run("/generate", {prompt: text, slot_id: sel.slot}, user, sel.index + 2);
  user.label = "branch";
  return run("/continue", {prompt: text, slot_id: sel.slot, message_index: sel.index, new_slot: true}, user, sel.index + 2);
}

function branchOrFocus(node, excerpt, prompt, focus) {
  const shown = `About “${excerpt.length > 80 ? excerpt.slice(0, 80) + "…" : excerpt}”: ${prompt}`;
  const context = parseInt($("p-context").value, 10) || 0;
  const user = addNode("user", shown, node.id);
  if (focus && state.slotHead.get(node.slot) === node.id) {
    user.label = "focus";
    return run("/focus", {slot_id: node.slot, text_excerpt: excerpt, context_window: context, prompt}, user, node.index + 2);
  }
  user.label = "branch";
  return run("/v1/chat/branch", {parent_slot_id: node.slot, branch_mode: "reuse_kv", message_index: node.index,
                                 text_excerpt: excerpt, context_window: context, prompt}, user, node.index + 2);
}

async function refreshSlots() {
  try {
    const [slots, health] = await Promise.all([
      fetch("/slots", {headers: headers()}).then((r) => r.ok ? r.json() : []),
      fetch("/health").then((r) => r.json()),
    ]);
    const tbody = document.querySelector("#slots tbody");
    tbody.innerHTML = "";
    for (const s of slots) {
      const tr = document.createElement("tr");
      tr.className = s.state;
      const cells = [s.id, s.state, s.tokens, (s.bytes / 1048576).toFixed(1),
                     `${s.last_reused_tokens}/${s.last_prompt_tokens}`, s.parent === null ? "" : s.parent];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.textContent = "erase";
      b.disabled = s.state === "busy";
      b.onclick = async () => { await fetch(`/slots/${s.id}?action=erase`, {method: "POST", headers: headers()}); refreshSlots(); };
      td.appendChild(b);
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    const kv = health.kv || {};
    $("kv-summary").textContent = `${health.slots.used}/${health.slots.max} · KV ${kv.blocks_used}/${kv.blocks_total} blocks`;
  } catch (e) { /* the server may be restarting */ }
}

// ---------------------------------------------------------------- selection popup

let pending = null;  // {node, excerpt}

function onSelection() {
  const sel = window.getSelection();
  const text = sel ? sel.toString().trim() : "";
  if (!text || state.busy) return;
  const anchor = sel.anchorNode && (sel.anchorNode.nodeType === 1 ? sel.anchorNode : sel.anchorNode.parentElement);
  const box = anchor && anchor.closest(".message.assistant");
  if (!box) return;
  const node = state.nodes.get(parseInt(box.dataset.node, 10));
  if (!node || node.slot === null) return;
  pending = {node, excerpt: text};
  const rect = sel.getRangeAt(0).getBoundingClientRect();
  const popup = $("selection-popup");
  $("popup-excerpt").textContent = `“${text}”`;
  popup.style.left = Math.max(8, Math.min(window.innerWidth - 350, rect.left)) + "px";
  popup.style.top = Math.min(window.innerHeight - 140, rect.bottom + 8) + "px";
  popup.classList.remove("hidden");
  $("popup-prompt").value = "";
  $("popup-prompt").focus();
}

function closePopup() { $("selection-popup").classList.add("hidden"); pending = null; }

function popupAction(focus) {
  const prompt = $("popup-prompt").value.trim() || "Explain this in more detail.";
  const p = pending;
  closePopup();
  if (p) branchOrFocus(p.node, p.excerpt, prompt, focus);
}

// ---------------------------------------------------------------- wiring

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("new-chat").onclick = () => select(null);
$("messages").addEventListener("mouseup", () => setTimeout(onSelection, 0));
$("popup-branch").onclick = () => popupAction(false);
$("popup-focus").onclick = () => popupAction(true);
$("popup-cancel").onclick = closePopup;
$("popup-prompt").addEventListener("keydown", (e) => { if (e.key === "Enter") popupAction(false); if (e.key === "Escape") closePopup(); });
$("p-api-key").value = localStorage.getItem("kvcache-api-key") || "";
$("p-api-key").addEventListener("change", () => { localStorage.setItem("kvcache-api-key", $("p-api-key").value); refreshSlots(); });

fetch("/v1/models", {headers: headers()}).then((r) => r.json()).then((m) => {
  if (m.data && m.data[0]) $("model-name").textContent = "model: " + m.data[0].id;
}).catch(() => {});
renderMessages();
renderTree();
refreshSlots();
setInterval(refreshSlots, 2000);
