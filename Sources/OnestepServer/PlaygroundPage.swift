// The playground served at GET /: one self-contained HTML page (inline CSS and script; no external scripts, fonts
// or CDNs, enforced by its Content-Security-Policy) that talks to the server's own JSON API:
//   GET v1/models                   model picker; per model a class picker (`classes`) or, when the entry's
//                                   `fields` lists "prompt", a prompt box (plus negative prompt / guidance when
//                                   `fields` lists "negative_prompt" / "guidance_scale")
//   POST v1/images/generations      Generate: images arrive as base64 PNGs with their seeds; queue and compute
//                                   times come from the X-Queue-Ms / X-Compute-Ms / X-Batch-Images headers
// Small images are shown scaled up by an integer factor with `image-rendering: pixelated` (crisp pixels). Every run
// of the session stays in a history list (a button per run brings it back). Errors are shown as the server's own
// message. Keyboard: every control is a labelled form field, Enter (Ctrl+Enter in the prompt box) generates.
// URLs are relative, so the page also works behind a proxy that mounts the server under a path prefix.
// Tested in headless Chromium by Tests/clients/playground_test.py.
import HTTP1

enum PlaygroundPage {
    /// The page with its headers. The CSP forbids loading anything from another origin, so a stray external
    /// reference fails in the browser test instead of silently working only when online.
    static let response: HTTPResponse = {
        var r = HTTPResponse(status: .ok, contentType: "text/html; charset=utf-8", body: Array(html.utf8))
        r.headers.add(name: "Content-Security-Policy",
                      value: "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'")
        r.headers.add(name: "X-Content-Type-Options", value: "nosniff")
        r.headers.add(name: "Cache-Control", value: "no-cache")
        return r
    }()

    static let html: String = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Onestep playground</title>
<link rel="icon" href="data:,">
<style>
:root { color-scheme: light dark; --fg: #1c1c1c; --bg: #f6f6f4; --panel: #fff; --muted: #5d5d5d; --accent: #2150b8;
        --err: #a3001b; --border: #d6d6d0; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #ececec; --bg: #161616; --panel: #202020; --muted: #a8a8a8; --accent: #86a8ff; --err: #ff7a8a; --border: #3a3a3a; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; background: var(--bg); color: var(--fg); }
header { padding: .7rem 1.2rem; border-bottom: 1px solid var(--border); display: flex; gap: 1rem; align-items: baseline; }
header h1 { font-size: 1.15rem; margin: 0; }
header span { color: var(--muted); font-size: .9em; }
main { display: grid; grid-template-columns: minmax(16rem, 20rem) 1fr; gap: 1.2rem; padding: 1.2rem; }
@media (max-width: 720px) { main { grid-template-columns: 1fr; } }
form { background: var(--panel); border: 1px solid var(--border); border-radius: 8px; padding: 1rem;
       display: flex; flex-direction: column; gap: .75rem; align-self: start; }
label.field { display: flex; flex-direction: column; gap: .2rem; font-weight: 600; }
.hint { font-weight: 400; color: var(--muted); font-size: .85em; }
input, select, textarea, button { font: inherit; color: inherit; }
input, select, textarea { background: var(--bg); border: 1px solid var(--border); border-radius: 5px; padding: .35rem .45rem; }
textarea { resize: vertical; min-height: 4.5rem; }
.inline { display: flex; gap: .6rem; align-items: center; }
.inline input[type=number] { flex: 1; min-width: 0; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: .6rem; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
#generate { background: var(--accent); color: #fff; border: 0; border-radius: 6px; padding: .6rem; font-weight: 700; cursor: pointer; }
@media (prefers-color-scheme: dark) { #generate { color: #111; } }
#generate:disabled { opacity: .55; cursor: progress; }
#status { color: var(--muted); min-height: 1.4em; margin: 0; }
#error { color: var(--err); font-weight: 600; margin: 0; white-space: pre-wrap; }
#error:empty { display: none; }
h2 { font-size: 1rem; margin: 0 0 .6rem; }
section + section { margin-top: 1.4rem; }
.results { display: flex; flex-wrap: wrap; gap: .9rem; }
figure { margin: 0; background: var(--panel); border: 1px solid var(--border); border-radius: 8px; padding: .55rem; }
figure img { display: block; max-width: 100%; height: auto;
             image-rendering: crisp-edges; image-rendering: pixelated; /* crisp pixels when scaled up */
             background: repeating-conic-gradient(#c8c8c8 0 25%, #f0f0f0 0 50%) 0 0 / 16px 16px; }
figcaption { font-size: .85em; color: var(--muted); margin-top: .35rem; display: flex; flex-direction: column; gap: .1rem; }
figcaption b { color: var(--fg); font-weight: 600; }
figcaption button, #history button { background: none; border: 1px solid var(--border); border-radius: 5px; padding: .1rem .4rem; cursor: pointer; font-size: .9em; align-self: start; }
#history { list-style: none; padding: 0; margin: 0; display: flex; flex-direction: column; gap: .35rem; }
#history button { display: flex; gap: .6rem; align-items: center; width: 100%; text-align: left; padding: .3rem .45rem; }
#history button[aria-current=true] { border-color: var(--accent); }
#history img { width: 32px; height: 32px; image-rendering: pixelated; flex: none; }
.empty { color: var(--muted); }
[hidden] { display: none !important; }
</style>
</head>
<body>
<header><h1>Onestep playground</h1><span id="server-info">loading models…</span></header>
<main>
<form id="form" novalidate aria-describedby="keys">
  <label class="field">Model
    <select id="model" name="model" required></select>
    <span class="hint" id="model-info"></span>
  </label>
  <label class="field" id="prompt-field" hidden>Prompt
    <textarea id="prompt" name="prompt" placeholder="what to draw"></textarea>
  </label>
  <label class="field" id="negative-field" hidden>Negative prompt
    <textarea id="negative" name="negative_prompt" placeholder="what to avoid (optional)"></textarea>
  </label>
  <label class="field" id="class-field" hidden>Class
    <select id="class" name="label"></select>
  </label>
  <div class="field">
    <label class="field" for="seed">Seed</label>
    <div class="inline">
      <input id="seed" name="seed" type="number" min="0" step="1" inputmode="numeric" value="0" disabled aria-describedby="seed-hint">
      <label><input id="random" type="checkbox" checked> random</label>
    </div>
    <span class="hint" id="seed-hint">image i of a request uses seed + i</span>
  </div>
  <div class="pair">
    <label class="field">Steps <input id="steps" name="steps" type="number" min="1" step="1" value="1"></label>
    <label class="field">Images (n) <input id="n" name="n" type="number" min="1" max="16" step="1" value="4"></label>
  </div>
  <label class="field" id="guidance-field" hidden>Guidance scale
    <input id="guidance" name="guidance_scale" type="number" min="0" step="0.5" value="1">
  </label>
  <button id="generate" type="submit">Generate</button>
  <p id="status" role="status" aria-live="polite"></p>
  <p id="error" role="alert"></p>
  <p class="hint" id="keys">Enter generates (Ctrl+Enter in a prompt box); Tab moves between fields.</p>
</form>
<div>
  <section aria-labelledby="results-title">
    <h2 id="results-title">Results</h2>
    <div id="results" class="results"><p class="empty">Press Generate.</p></div>
  </section>
  <section aria-labelledby="history-title">
    <h2 id="history-title">History of this session</h2>
    <ol id="history"></ol>
  </section>
</div>
</main>
<script>
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], runs: [], shown: -1 };

  // What /v1/models says a model takes: an entry's `fields` list when it has one; otherwise a class model,
  // whose `prompt`/`label` names one of `classes`.
  const fieldsOf = (m) => Array.isArray(m.fields) ? m.fields : [];
  const takesPrompt = (m) => fieldsOf(m).includes("prompt");
  const current = () => state.models.find((m) => m.id === $("model").value);

  function errorText(status, statusText, bodyText) {
    let message = bodyText;
    try { const j = JSON.parse(bodyText); message = (j.error && j.error.message) || j.detail || bodyText; } catch (_) {}
    return `The server answered ${status}${statusText ? " " + statusText : ""}: ${message || "(no message)"}`;
  }
  function showError(text) { $("error").textContent = text; $("status").textContent = ""; }

  function useModels(list, defaultId) {
    state.models = list;
    const select = $("model");
    select.replaceChildren(...list.map((m) => new Option(m.id, m.id)));
    const pick = list.find((m) => m.id === defaultId) || list.find((m) => m.default) || list[0];
    if (pick) select.value = pick.id;
    $("server-info").textContent = `${list.length} model${list.length === 1 ? "" : "s"} loaded`;
    modelChanged();
  }

  function modelChanged() {
    const m = current();
    if (!m) return;
    const prompt = takesPrompt(m), classes = Array.isArray(m.classes) ? m.classes : [];
    $("prompt-field").hidden = !prompt;
    $("negative-field").hidden = !fieldsOf(m).includes("negative_prompt");
    $("guidance-field").hidden = !fieldsOf(m).includes("guidance_scale");
    $("class-field").hidden = prompt || classes.length === 0;
    if (!prompt && classes.length) {
      const options = [new Option("any (follows the seed)", "")];
      classes.forEach((c, i) => options.push(new Option(`${c}${String(c) === String(i) ? "" : " (" + i + ")"}`, String(c))));
      $("class").replaceChildren(...options);
    }
    const steps = $("steps");
    steps.max = m.max_steps || "";
    steps.value = m.default_steps || 1;
    if (m.default_guidance_scale !== undefined) $("guidance").value = m.default_guidance_scale;
    const size = m.image_size ? `${m.image_size}×${m.image_size}` : "";
    $("model-info").textContent = [size, m.channels === 1 ? "gray" : m.channels ? `${m.channels} channels` : "",
      m.dtype, m.sampler, m.max_steps ? `1–${m.max_steps} steps` : ""].filter(Boolean).join(", ");
  }

  function integer(id, name, min, max) {
    const raw = $(id).value.trim();
    if (!/^\d+$/.test(raw)) throw new Error(`${name} must be a whole number${min !== undefined ? " from " + min : ""}${max ? " to " + max : ""}; got "${raw}".`);
    const v = Number(raw);
    if ((min !== undefined && v < min) || (max && v > max)) throw new Error(`${name} must be from ${min} to ${max}; got ${v}.`);
    return v;
  }

  function requestBody() {
    const m = current();
    if (!m) throw new Error("No model is loaded: the model list is empty.");
    const body = { model: m.id, steps: integer("steps", "Steps", 1), n: integer("n", "Images (n)", 1, 16) };
    if (!$("random").checked) body.seed = integer("seed", "Seed", 0);
    if (takesPrompt(m)) {
      body.prompt = $("prompt").value;
      if (!$("negative-field").hidden && $("negative").value.trim()) body.negative_prompt = $("negative").value;
    } else if (!$("class-field").hidden && $("class").value !== "") {
      body.label = $("class").value;
    }
    if (!$("guidance-field").hidden) {
      const g = Number($("guidance").value);
      if (!Number.isFinite(g) || g < 0) throw new Error("Guidance scale must be a number of 0 or more.");
      body.guidance_scale = g;
    }
    return body;
  }

  async function generate(event) {
    if (event) event.preventDefault();
    $("error").textContent = "";
    let body;
    try { body = requestBody(); } catch (e) { showError(e.message); return; }
    const button = $("generate");
    button.disabled = true;
    $("status").textContent = `Generating ${body.n} image${body.n === 1 ? "" : "s"} with ${body.model}…`;
    const started = performance.now();
    try {
      let response;
      try {
        response = await fetch("v1/images/generations", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      } catch (e) {
        showError(`Could not reach the server (${e.message}). Is onestep-serve still running?`);
        return;
      }
      const text = await response.text();
      if (!response.ok) { showError(errorText(response.status, response.statusText, text)); return; }
      const json = JSON.parse(text);
      const m = state.models.find((x) => x.id === body.model) || {};
      const run = {
        body, model: m, at: new Date(), roundTripMs: performance.now() - started,
        queueMs: response.headers.get("X-Queue-Ms"), computeMs: response.headers.get("X-Compute-Ms"),
        batch: response.headers.get("X-Batch-Images"),
        images: json.data.map((d) => ({ src: "data:image/png;base64," + d.b64_json, seed: d.seed,
          label: d.label === undefined ? null : (Array.isArray(m.classes) && m.classes[d.label] !== undefined ? m.classes[d.label] : d.label) })),
      };
      state.runs.unshift(run);
      show(0);
      $("status").textContent = `Done: ${run.images.length} image${run.images.length === 1 ? "" : "s"} in ${Math.round(run.roundTripMs)} ms.`;
    } catch (e) {
      showError(`Unexpected answer from the server: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function show(index) {
    state.shown = index;
    const run = state.runs[index];
    const size = run.model.image_size || 64;
    const scale = Math.max(1, Math.floor(256 / size));
    $("results").replaceChildren(...run.images.map((img) => {
      const figure = document.createElement("figure");
      const el = new Image(size * scale, size * scale);
      el.src = img.src;
      el.alt = `${run.body.model}, seed ${img.seed}${img.label !== null ? ", " + img.label : ""}${run.body.prompt ? ", prompt: " + run.body.prompt : ""}`;
      el.dataset.seed = img.seed;
      const caption = document.createElement("figcaption");
      const line1 = document.createElement("span");
      line1.innerHTML = "<b>seed</b> ";
      line1.append(String(img.seed), img.label !== null ? ` · ${img.label}` : "");
      const line2 = document.createElement("span");
      line2.className = "timing";
      line2.textContent = `queue ${run.queueMs ?? "?"} ms · compute ${run.computeMs ?? "?"} ms` + (run.batch ? ` (batch of ${run.batch})` : "");
      const reuse = document.createElement("button");
      reuse.type = "button";
      reuse.textContent = "use this seed";
      reuse.addEventListener("click", () => { $("random").checked = false; $("seed").disabled = false; $("seed").value = img.seed; $("seed").focus(); });
      caption.append(line1, line2, reuse);
      figure.append(el, caption);
      return figure;
    }));
    renderHistory();
  }

  function renderHistory() {
    $("history").replaceChildren(...state.runs.map((run, i) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      if (i === state.shown) b.setAttribute("aria-current", "true");
      const thumb = new Image(32, 32);
      thumb.src = run.images[0].src;
      thumb.alt = "";
      const what = run.body.prompt !== undefined ? `“${run.body.prompt}”` : run.body.label !== undefined ? run.body.label : "any class";
      const text = document.createElement("span");
      text.textContent = `${run.at.toLocaleTimeString()} · ${run.body.model} · ${what} · ${run.images.length} × seed ${run.images[0].seed}` +
        `${run.images.length > 1 ? "…" : ""} · ${run.body.steps} step${run.body.steps === 1 ? "" : "s"} · compute ${run.computeMs ?? "?"} ms`;
      b.append(thumb, text);
      b.addEventListener("click", () => show(i));
      li.append(b);
      return li;
    }));
  }

  $("form").addEventListener("submit", generate);
  $("model").addEventListener("change", modelChanged);
  $("random").addEventListener("change", () => { $("seed").disabled = $("random").checked; if (!$("random").checked) $("seed").focus(); });
  for (const id of ["prompt", "negative"]) {
    $(id).addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(e); });
  }

  fetch("v1/models").then(async (r) => {
    const text = await r.text();
    if (!r.ok) throw new Error(errorText(r.status, r.statusText, text));
    const list = JSON.parse(text).data || [];
    useModels(list);
    if (!list.length) showError("The server has no models loaded.");
  }).catch((e) => { $("server-info").textContent = "no models"; showError(`Could not load the model list: ${e.message}`); });

  // For tests and the console: state, and a way to show what the page does for another /v1/models entry.
  window.onestepPlayground = { state, useModels, generate };
})();
</script>
</body>
</html>
"""#
}
