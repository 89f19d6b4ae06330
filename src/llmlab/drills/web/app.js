// The drills page: list the drills, load one into the editor, and send it to the server's grader (the same
// sandboxed check as `llmlab drill check`). Every POST carries X-Llmlab-Drill, which the server requires. No libraries.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;  // the name of the drill on screen
let summaries = [];  // GET /api/drills

async function api(path, method = "GET", body = undefined) {
  const init = { method, headers: {} };
  if (method === "POST") {
    init.headers["X-Llmlab-Drill"] = "1";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail ? String(data.detail) : `${r.status} ${r.statusText}`);
  return data;
}

function fmtTime(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function renderNav() {
  const nav = $("drills");
  nav.textContent = "";
  let area = null;
  for (const d of summaries) {
    if (d.area !== area) {
      area = d.area;
      const h = document.createElement("h3");
      h.textContent = area;
      nav.appendChild(h);
    }
    const a = document.createElement("a");
    a.href = `#${d.name}`;
    a.dataset.drill = d.name;
    a.dataset.status = d.status;
    a.title = `${d.statement} (~${d.minutes} min; ${d.status}, best ${fmtTime(d.best_seconds)})`;
    if (d.name === current) a.classList.add("current");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = d.name;
    const stars = document.createElement("span");
    stars.className = "stars";
    stars.textContent = "★".repeat(d.difficulty);
    a.append(name, stars);
    nav.appendChild(a);
  }
  const passed = summaries.filter((d) => d.status === "passed").length;
  $("progress").textContent = `${passed}/${summaries.length} passed`;
}

function updateSummary(s) {
  const i = summaries.findIndex((d) => d.name === s.name);
  if (i >= 0) summaries[i] = s;
  renderNav();
}

function showHints(hints, n) {
  $("hints").textContent = "";
  hints.forEach((h) => {
    const li = document.createElement("li");
    li.textContent = h;
    $("hints").appendChild(li);
  });
  $("hint").textContent = hints.length < n ? `Hint (${hints.length}/${n})` : `Hints ${n}/${n}`;
  $("hint").disabled = hints.length >= n;
}

function setResult(state, text) {
  $("result").dataset.state = state;
  $("result").textContent = text;
}

async function openDrill(name) {
  try {
    const d = await api(`/api/drills/${encodeURIComponent(name)}`);
    current = d.name;
    $("empty").hidden = true;
    $("drill").hidden = false;
    $("name").textContent = `${d.name}()`;
    $("meta").textContent = `${d.area} · ${"★".repeat(d.difficulty)} · about ${d.minutes} min · write ${d.func}()` +
      (d.tags.length ? ` · ${d.tags.join(", ")}` : "");
    $("statement").textContent = d.statement;
    $("file").textContent = `saved as ${d.file} on Check`;
    $("editor").value = d.source;
    $("solution-view").hidden = true;
    setResult("idle", "");
    showHints(d.hints, d.n_hints);
    updateSummary(d);
  } catch (e) {
    setResult("error", `could not open ${name}: ${e.message}`);
  }
}

async function check() {
  if (!current) return;
  const name = current;
  $("check").disabled = true;
  setResult("running", "checking: visible examples, then hidden cases, in a sandboxed process…");
  try {
    const r = await api(`/api/drills/${encodeURIComponent(name)}/check`, "POST", { source: $("editor").value });
    if (name !== current) return;
    let text = r.lines.join("\n");
    if (r.seconds !== null) text += `\ntime since start: ${fmtTime(r.seconds)} (estimate ${r.estimate_minutes} min)`;
    setResult(r.passed ? "passed" : "failed", text);
    updateSummary(r.summary);
  } catch (e) {
    setResult("error", `check failed: ${e.message}`);
  } finally {
    $("check").disabled = false;
  }
}

async function hint() {
  try {
    const r = await api(`/api/drills/${encodeURIComponent(current)}/hint`, "POST");
    showHints(r.hints, r.n_hints);
  } catch (e) {
    setResult("error", `hint failed: ${e.message}`);
  }
}

async function reset() {
  try {
    const r = await api(`/api/drills/${encodeURIComponent(current)}/reset`, "POST");
    $("editor").value = r.source;
    setResult("idle", "");
  } catch (e) {
    setResult("error", `start over failed: ${e.message}`);
  }
}

async function solution() {
  try {
    const r = await api(`/api/drills/${encodeURIComponent(current)}/solution`);
    $("solution-view").textContent = r.source;
    $("solution-view").hidden = false;
  } catch (e) {
    setResult("error", `solution failed: ${e.message}`);
  }
}

$("editor").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    check();
  } else if (e.key === "Tab" && !e.shiftKey) {  // indent instead of leaving the editor
    e.preventDefault();
    const ed = e.target;
    const start = ed.selectionStart;
    ed.setRangeText("    ", start, ed.selectionEnd, "end");
  }
});
$("check").addEventListener("click", check);
$("hint").addEventListener("click", hint);
$("reset").addEventListener("click", reset);
$("solution").addEventListener("click", solution);
window.addEventListener("hashchange", () => {
  const name = decodeURIComponent(location.hash.slice(1));
  if (name && name !== current) openDrill(name);
});

(async () => {
  try {
    summaries = await api("/api/drills");
    renderNav();
    const name = decodeURIComponent(location.hash.slice(1));
    if (name) await openDrill(name);
  } catch (e) {
    $("progress").textContent = `drill list failed: ${e.message}`;
  }
})();
