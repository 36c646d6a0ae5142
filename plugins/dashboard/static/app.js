// The router's dashboard: plain JavaScript, no build step (docs/ui.md).
// Every call goes to the router's own API; errors are shown as their message.
"use strict";

const PAGES = ["overview", "models", "downloads", "keys", "settings", "playground"];
const STRATEGIES = ["round_robin", "random", "weighted", "least_connections", "least_latency", "sticky"];
const $ = (sel, root = document) => root.querySelector(sel);
const keys = {
  get admin() { return sessionStorage.getItem("router.admin") || ""; },
  get client() { return sessionStorage.getItem("router.client") || ""; },
  set(admin, client) {
    sessionStorage.setItem("router.admin", admin);
    if (client) sessionStorage.setItem("router.client", client); else sessionStorage.removeItem("router.client");
  },
  clear() { sessionStorage.removeItem("router.admin"); sessionStorage.removeItem("router.client"); },
};

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

// An error answer as a sentence: OpenAI's envelope, FastAPI's detail, or the status.
async function errorOf(resp) {
  let text = "";
  try { text = await resp.text(); } catch (_) { /* the body is gone */ }
  let message = "", code = null;
  try {
    const body = JSON.parse(text);
    if (body && body.error) { message = body.error.message || ""; code = body.error.code || null; }
    else if (body && typeof body.detail === "string") message = body.detail;
  } catch (_) { message = text.slice(0, 300); }
  if (!message) message = `${resp.status} ${resp.statusText}`.trim();
  if (resp.status === 401 && code === "invalid_api_key")
    message += " (this router has client keys: sign in again with a client key, or make one on the Keys page)";
  return new ApiError(resp.status, message, code);
}

// The admin API takes the admin key; the OpenAI and management endpoints take the client key.
function headersFor(path, extra = {}) {
  const h = { ...extra };
  const admin = path.startsWith("/admin") || path.startsWith("/status") || path.startsWith("/ui/api");
  const key = admin ? keys.admin : keys.client;
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headersFor(path) };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  let resp;
  try { resp = await fetch(path, init); }
  catch (exc) { throw new ApiError(0, `the router did not answer (${exc.message}); is it running?`); }
  if (!resp.ok) throw await errorOf(resp);
  return resp.status === 204 ? null : resp.json();
}

// A poll's success clears only a poll's error: an action's message stays until the next action.
let errorFromPoll = false;
function showError(exc, poll = false) {
  if (!exc && poll && !errorFromPoll) return;
  errorFromPoll = Boolean(exc) && poll;
  const el = $("#error");
  el.textContent = exc ? (exc.message || String(exc)) : "";
  el.hidden = !exc;
  if (exc && exc.status === 401 && !exc.code) signOut("The admin key was refused: " + exc.message);
}
function notice(text) { const el = $("#notice"); el.textContent = text || ""; el.hidden = !text; }
async function attempt(fn, poll = false) {
  try { const value = await fn(); showError(null, poll); return value; }
  catch (exc) { showError(exc, poll); return undefined; }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined)
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}
const ms = v => (v === null || v === undefined ? "–" : `${Number(v).toFixed(v < 10 ? 2 : 0)} ms`);
const num = v => (v === null || v === undefined ? "–" : String(v));
const secs = v => {
  if (v === null || v === undefined) return "–";
  v = Math.max(0, Math.round(v));
  return v >= 60 ? `${Math.floor(v / 60)} min ${v % 60} s` : `${v} s`;
};
const bytes = n => n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`;

// -- pages and the poller -----------------------------------------------------------------

let timer = null;
let current = null;

function pageOf(path) {
  const name = path.replace(/^\/ui\/?/, "").split("/")[0];
  return PAGES.includes(name) ? name : "overview";
}

function go(page, push = true) {
  if (push) history.pushState({}, "", `/ui/${page}`);
  current = page;
  for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== page;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · Router dashboard`;
  showError(null); notice("");
  clearInterval(timer);
  const view = VIEWS[page];
  if (view.enter) view.enter();
  if (view.refresh) { view.refresh(); timer = setInterval(() => view.refresh(), view.every || 2000); }
  const heading = $(`#h-${page}`);
  if (push && heading) heading.focus();
}

// -- Overview -----------------------------------------------------------------------------

function healthText(b) {
  if (b.draining) return "draining";
  if (b.healthy === null || b.healthy === undefined) return "unknown";
  return b.healthy ? "healthy" : "unhealthy";
}

function drawChart(series) {
  const canvas = $("#chart");
  const width = canvas.clientWidth || 800;
  const height = canvas.clientHeight || 220;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const pad = { l: 40, r: 8, t: 8, b: 20 };
  const n = series.t.length;
  const top = Math.max(1, ...series.requests, ...series.errors);
  const x = i => pad.l + (n <= 1 ? 0 : (i / (n - 1)) * (width - pad.l - pad.r));
  const y = v => height - pad.b - (v / top) * (height - pad.t - pad.b);
  const style = getComputedStyle(document.body);
  ctx.strokeStyle = style.getPropertyValue("--grid"); ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(width - pad.r, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(v < 10 ? 1 : 0), 4, y(v) + 4);
  }
  ctx.fillText(`${Math.round(n / 60 * 10) / 10} min ago`, pad.l, height - 4);
  ctx.fillText("now", width - pad.r - 24, height - 4);
  const line = (values, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
  };
  line(series.requests, style.getPropertyValue("--accent"));
  line(series.errors, style.getPropertyValue("--bad"));
  const last = n ? `${series.requests[n - 1]} requests/s and ${series.errors[n - 1]} errors/s now` : "no data yet";
  canvas.setAttribute("aria-label", `Requests and errors per second over the last minutes: ${last}`);
}

const overview = {
  every: 1000,
  async refresh() {
    const result = await attempt(() => Promise.all([api("/status"), api("/ui/api/overview")]), true);
    if (!result) return;
    const [status, extra] = result;
    const totals = $("#totals");
    totals.replaceChildren(
      ...[["Requests", status.requests], ["Errors", status.errors], ["Failovers", status.retries],
          ["Strategy", status.strategy], ["Ready", status.ready ? "yes" : "no"]]
        .map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: String(v) }))));
    $("#chart-window").textContent = String(Math.round(extra.window_s / 60));
    const rows = status.backends.map(b => {
      const more = extra.backends[b.name] || {};
      const health = healthText(b);
      return el("tr", { "data-backend": b.name },
        el("th", { scope: "row" }, b.name, el("div", { class: "hint", text: b.provider })),
        el("td", { "data-field": "health" }, el("span", { class: `pill ${health}`, text: health })),
        el("td", { "data-field": "circuit" }, el("span", { class: `pill circuit-${b.circuit}`, text: b.circuit })),
        el("td", { "data-field": "in_flight", text: num(b.in_flight) }),
        el("td", { "data-field": "queued", text: num(b.queued) }),
        el("td", { "data-field": "ewma", text: ms(b.latency_ewma_ms) }),
        el("td", { "data-field": "p50", text: ms(more.p50_ms) }),
        el("td", { "data-field": "p95", text: ms(more.p95_ms) }),
        el("td", { "data-field": "rps", text: more.requests_per_s === null || more.requests_per_s === undefined ? "–" : more.requests_per_s.toFixed(2) }),
        el("td", { "data-field": "last_error", class: "wrap", text: b.last_error || "" }));
    });
    $("#backends tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 10, text: "No backends: add one on the Settings page." }))]));
    drawChart(extra.series);
  },
};

// -- Models -------------------------------------------------------------------------------

const models = {
  every: 2000,
  async refresh() {
    const result = await attempt(async () => {
      const [list, status] = await Promise.all([api("/v1/models"), api("/status")]);
      const providers = Object.fromEntries(status.backends.map(b => [b.name, b.provider]));
      const dynamic = status.backends.some(b => b.provider === "dynamic");
      const loaded = dynamic ? (await api("/v1/models/loaded")).loaded_models : [];
      // Local workers' live state (gguf, gptq), by backend and model.
      const workers = Object.fromEntries(status.backends.map(b => [b.name, (b.provider_status || {}).models || {}]));
      return { list: list.data, providers, loaded, workers };
    }, true);
    if (!result) return;
    const { list, providers, loaded, workers } = result;
    const aliases = {};
    for (const m of list) if (m.root) (aliases[m.root] = aliases[m.root] || []).push(m.id);
    const rows = list.filter(m => !m.root).map(m => {
      const backends = m.backends || [];
      const dyn = backends.find(b => providers[b] === "dynamic");
      const local = dyn ? undefined : backends.find(b => LOCAL_PROVIDERS.includes(providers[b]));
      const entry = loaded.find(e => e.model === m.id || e.model_path === m.id);
      let state = "–";
      const worker = local ? (workers[local] || {})[m.id] : undefined;
      const up = worker ? worker.state === "ready" : Boolean(m.loaded);
      if (dyn) state = entry ? entry.state : "not loaded";
      else if (worker) state = worker.state === "ready" ? "loaded" : worker.state === "starting" ? "loading" : "not loaded";
      else if (m.loaded !== undefined) state = m.loaded ? "loaded" : "not loaded";
      else state = "served";
      const ttl = entry ? (entry.ttl === 0 ? "never unloads" : entry.ttl_remaining === null ? "in use" : secs(entry.ttl_remaining)) : "–";
      const actions = [];
      if (dyn && !entry) actions.push(el("button", { type: "button", "aria-label": `Load ${m.id}`,
        onclick: () => modelAction("load", m.id, dyn), text: "Load" }));
      if (dyn && entry) actions.push(el("button", { type: "button", "aria-label": `Unload ${m.id}`,
        onclick: () => modelAction("unload", m.id, dyn), text: "Unload" }));
      if (local) actions.push(el("button", { type: "button", "aria-label": `${up ? "Unload" : "Load"} ${m.id}`,
        onclick: () => localAction(up ? "unload" : "load", m.id, local), text: up ? "Unload" : "Load" }));
      return el("tr", { "data-model": m.id },
        el("th", { scope: "row", class: "wrap", text: m.id }),
        el("td", { text: backends.join(", ") }),
        el("td", { text: (aliases[m.id] || []).join(", ") || "–" }),
        el("td", { "data-field": "loaded" }, el("span", { class: `pill ${state.replace(/\s/g, "-")}`, text: state })),
        el("td", { "data-field": "ttl", text: ttl }),
        el("td", {}, ...actions));
    });
    $("#models tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, text: "No models yet." }))]));
  },
};

// Local engines (gguf, gptq): their workers are started and stopped through the admin API.
const LOCAL_PROVIDERS = ["gguf", "gptq"];
async function localAction(action, model, backend) {
  notice(action === "load" ? `Loading ${model} on ${backend}…` : `Unloading ${model} on ${backend}…`);
  const path = `/admin/backends/${encodeURIComponent(backend)}/models/${encodeURIComponent(model)}/${action}`;
  const done = await attempt(() => api(path, { method: "POST" }));
  notice(done ? `${model}: ${done.status}` : "");
  models.refresh();
}

async function modelAction(action, model, backend) {
  notice(action === "load" ? `Loading ${model}…` : `Unloading ${model} (after its requests finish)…`);
  const done = await attempt(() => api(`/v1/models/${action}`, { method: "POST", body: { model, router_backend: backend } }));
  notice(done ? `${model}: ${done.status}` : "");
  models.refresh();
}

// -- Downloads ----------------------------------------------------------------------------

const downloads = {
  every: 1000,
  async enter() {
    const status = await attempt(() => api("/status"));
    if (!status) return;
    const dyn = status.backends.filter(b => b.provider === "dynamic").map(b => b.name);
    $("#dl-backend").replaceChildren(...dyn.map(n => el("option", { value: n, text: n })));
    if (!dyn.length) showError(new ApiError(0, "No dynamic backend: downloads go into a dynamic backend's models_dir (docs/dynamic.md)."));
  },
  async refresh() {
    if (!$("#dl-backend").options.length) return;
    const result = await attempt(() => api(`/v1/models/download?router_backend=${encodeURIComponent($("#dl-backend").value)}`), true);
    if (!result) return;
    const items = result.downloads.slice().reverse().map(job => {
      const pct = Math.round((job.progress || 0) * 100);
      const active = job.status === "pending" || job.status === "downloading";
      return el("li", { class: "job", "data-job": job.job_id, "data-status": job.status },
        el("div", { class: "job-head" },
          el("strong", { text: job.repo_id || job.url }), " ",
          el("span", { class: `pill ${job.status}`, "data-field": "status", text: job.status }),
          job.quantization ? el("span", { class: "hint", text: ` ${job.quantization}` }) : null),
        el("progress", { max: 100, value: pct, "aria-label": `Progress of ${job.repo_id || job.url}` }),
        el("div", { class: "hint" }, `${pct}% · ${bytes(job.bytes_done || 0)} of ${bytes(job.bytes_total || 0)} · `,
          `${job.files_done}/${job.files_total} files`, job.error ? ` · ${job.error}` : "",
          job.status === "completed" && job.model_path ? ` · ${job.model_path}` : ""),
        active ? el("button", { type: "button", class: "quiet", "aria-label": `Cancel download of ${job.repo_id || job.url}`,
          onclick: () => cancelDownload(job.job_id), text: "Cancel" }) : null);
    });
    $("#downloads").replaceChildren(...(items.length ? items : [el("li", { class: "hint", text: "No downloads yet." })]));
  },
};

async function cancelDownload(jobId) {
  const backend = encodeURIComponent($("#dl-backend").value);
  const done = await attempt(() => api(`/v1/models/download/${jobId}?router_backend=${backend}`, { method: "DELETE" }));
  if (done) notice(done.message || `Download ${done.status}`);
  downloads.refresh();
}

async function startDownload(event) {
  event.preventDefault();
  const form = event.target;
  const body = { url: form.url.value.trim(), router_backend: form.router_backend.value };
  if (form.quantization.value.trim()) body.quantization = form.quantization.value.trim();
  const job = await attempt(() => api("/v1/models/download", { method: "POST", body }));
  if (job) { notice(`Download started: ${job.repo_id}`); downloads.refresh(); }
}

// -- Keys ---------------------------------------------------------------------------------

const keysView = {
  every: 5000,
  async refresh() {
    const result = await attempt(() => api("/admin/keys"), true);
    if (!result) return;
    const rows = result.keys.map(k => el("tr", { "data-key": k.name },
      el("th", { scope: "row", text: k.name }),
      el("td", {}, el("code", { text: `${k.prefix}…` })),
      el("td", { text: (k.models || []).join(", ") }),
      el("td", { text: num(k.rpm) }), el("td", { text: num(k.tpm) }), el("td", { text: num(k.requests) }),
      el("td", { text: k.last_used ? new Date(k.last_used * 1000).toLocaleString() : "never" }),
      el("td", { text: k.source }),
      el("td", {}, k.source === "api" ? el("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.name}`,
        onclick: () => revokeKey(k), text: "Revoke" }) : el("span", { class: "hint", text: "in the config file" }))));
    $("#keys tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, text: "No keys yet." }))]));
  },
};

async function revokeKey(k) {
  const done = await attempt(() => api(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" }));
  if (done !== undefined) notice(`Key ${k.name} revoked: requests with it now get 401.`);
  keysView.refresh();
}

async function createKey(event) {
  event.preventDefault();
  const form = event.target;
  const body = { name: form.name.value.trim() };
  const globs = form.models.value.split(",").map(s => s.trim()).filter(Boolean);
  if (globs.length) body.models = globs;
  for (const f of ["rpm", "tpm"]) if (form[f].value) body[f] = Number(form[f].value);
  const made = await attempt(() => api("/admin/keys", { method: "POST", body }));
  if (!made) return;
  $("#new-key-value").textContent = made.key;
  $("#new-key").hidden = false;
  $("#new-key-use").onclick = () => { keys.set(keys.admin, made.key); notice(`The dashboard now sends the key ${made.name} to the OpenAI endpoints.`); };
  form.reset();
  $("#new-key-title").focus?.();
  keysView.refresh();
}

// -- Settings -----------------------------------------------------------------------------

let discovered = [];

async function discover() {
  const form = $("#backend-form");
  if (!form.base_url.reportValidity()) return;
  notice("Asking the server for its models…");
  const result = await attempt(() => api("/ui/api/discover", { method: "POST",
    body: { base_url: form.base_url.value.trim(), api_key: form.api_key.value || undefined } }));
  notice("");
  if (!result) return;
  discovered = result.models.map(m => m.id);
  const list = $("#be-model-list");
  list.replaceChildren(...discovered.map((id, i) => el("div", { class: "check" },
    el("input", { type: "checkbox", id: `be-m-${i}`, value: id, checked: true }),
    el("label", { for: `be-m-${i}`, text: id }))));
  if (!discovered.length) list.replaceChildren(el("p", { class: "hint", text: "The server lists no models." }));
  $("#be-models").hidden = false;
  $("#be-save").disabled = false;
  notice(`${discovered.length} model${discovered.length === 1 ? "" : "s"} found at ${result.base_url}.`);
}

async function saveBackend(event) {
  event.preventDefault();
  const form = event.target;
  const picked = [...form.querySelectorAll("#be-model-list input:checked")].map(i => i.value);
  if (discovered.length && !picked.length) { showError(new ApiError(0, "Pick at least one model to enable.")); return; }
  const body = { name: form.name.value.trim(), provider: "openai_compatible", base_url: form.base_url.value.trim() };
  if (form.api_key.value) body.api_key = form.api_key.value;
  // All picked: the backend serves whatever the server lists, new models included.
  if (picked.length < discovered.length) body.models = picked;
  const made = await attempt(() => api("/admin/backends", { method: "POST", body }));
  if (!made) return;
  notice(`Backend ${made.name} added with ${made.models.length} model${made.models.length === 1 ? "" : "s"}.`);
  form.reset(); discovered = []; $("#be-models").hidden = true; $("#be-save").disabled = true;
  settings.refresh();
}

async function removeBackend(name) {
  notice(`Removing ${name} (its requests finish first)…`);
  const done = await attempt(() => api(`/admin/backends/${encodeURIComponent(name)}`, { method: "DELETE" }));
  notice(done ? `Backend ${name} removed.` : "");
  settings.refresh();
}

const ROUTING_FIELDS = [
  ["routing.strategy", "Strategy", "select"],
  ["routing.retries", "Retries on another backend", "number"],
  ["routing.timeout_s", "Request deadline (s)", "number"],
  ["routing.health_check_interval_s", "Health check interval (s)", "number"],
];
let routingLoaded = false;

const settings = {
  every: 3000,
  enter() { routingLoaded = false; },
  async refresh() {
    const status = await attempt(() => api("/status"), true);
    if (!status) return;
    $("#providers").replaceChildren(...status.backends.map(b => el("li", { class: "card provider", "data-provider": b.name },
      el("div", { class: "job-head" }, el("strong", { text: b.name }), " ",
        el("span", { class: `pill ${healthText(b)}`, text: healthText(b) }), " ",
        el("span", { class: "hint", text: `${b.provider}${b.base_url ? " · " + b.base_url : ""}` })),
      el("div", { class: "models-list", text: b.models.length ? b.models.join(", ") : "no models discovered yet" }),
      b.last_error ? el("div", { class: "error", text: b.last_error }) : null,
      el("button", { type: "button", class: "quiet", "aria-label": `Remove backend ${b.name}`, onclick: () => removeBackend(b.name), text: "Remove" }))));
    if (!routingLoaded) await loadRouting(status);
  },
};

async function loadRouting(status) {
  routingLoaded = true;
  const box = $("#routing-fields");
  let values = {};
  try { values = (await api("/admin/settings")).settings; }
  catch (exc) {
    box.replaceChildren(el("p", { class: "hint", text: `Live settings are not available (${exc.message}); the strategy in use is ${status.strategy}.` }));
    $("#routing-form button").disabled = true;
    return;
  }
  $("#routing-form button").disabled = false;
  box.replaceChildren(...ROUTING_FIELDS.map(([key, label, kind]) => {
    const id = `rt-${key.replace(/\W/g, "-")}`;
    const setting = values[key] || { value: "", source: "default" };
    const input = kind === "select"
      ? el("select", { id, name: key }, ...[...new Set([...STRATEGIES, setting.value])].map(s => el("option", { value: s, text: s, selected: s === setting.value })))
      : el("input", { id, name: key, type: "number", step: "any", min: "0", value: setting.value });
    input.dataset.initial = String(setting.value);
    return el("div", { class: "field" }, el("label", { for: id }, label, el("span", { class: "hint", text: ` (${key}, from ${setting.source})` })), input);
  }));
}

async function saveRouting(event) {
  event.preventDefault();
  const changed = [...$("#routing-fields").querySelectorAll("input, select")].filter(i => i.value !== i.dataset.initial);
  if (!changed.length) { notice("Nothing changed."); return; }
  for (const input of changed) {
    const value = input.type === "number" ? Number(input.value) : input.value;
    const ok = await attempt(() => api("/admin/settings", { method: "PUT", body: { key: input.name, value } }));
    if (ok === undefined) return;
    input.dataset.initial = input.value;
  }
  notice(`Saved: ${changed.map(i => `${i.name} = ${i.value}`).join(", ")}.`);
  routingLoaded = false;
}

// -- Playground ---------------------------------------------------------------------------

let controller = null;

const playground = {
  async enter() {
    const list = await attempt(() => api("/v1/models"));
    if (!list) return;
    const select = $("#pg-model");
    const keep = select.value;
    select.replaceChildren(...list.data.map(m => el("option", { value: m.id, text: m.id, selected: m.id === keep })));
  },
};

async function sendChat(event) {
  event.preventDefault();
  const form = event.target;
  const messages = [];
  if (form.system.value.trim()) messages.push({ role: "system", content: form.system.value.trim() });
  messages.push({ role: "user", content: form.message.value });
  const answer = $("#pg-answer"), reasoning = $("#pg-reasoning");
  answer.textContent = ""; reasoning.textContent = "";
  for (const id of ["#pg-backend", "#pg-ttft", "#pg-latency"]) $(id).textContent = "–";
  $("#pg-status").textContent = "sending…";
  $("#pg-send").disabled = true; $("#pg-stop").disabled = false;
  controller = new AbortController();
  const started = performance.now();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      headers: headersFor("/v1/chat/completions", { "Content-Type": "application/json" }),
      body: JSON.stringify({ model: form.model.value, messages, stream: true }),
    });
    $("#pg-backend").textContent = resp.headers.get("X-Router-Backend") || "–";
    if (!resp.ok) throw await errorOf(resp);
    $("#pg-status").textContent = "streaming…";
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", first = true, finish = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        const data = event.split(/\r?\n/).filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(0, chunk.error.message || "the stream failed", chunk.error.code);
        const choice = (chunk.choices || [])[0];
        if (!choice) continue;
        const delta = choice.delta || {};
        if (first && (delta.content || delta.reasoning_content)) {
          $("#pg-ttft").textContent = ms(performance.now() - started); first = false;
        }
        if (delta.reasoning_content) reasoning.textContent += delta.reasoning_content;
        if (delta.content) answer.textContent += delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    $("#pg-status").textContent = `done${finish ? ` (${finish})` : ""}`;
    showError(null);
  } catch (exc) {
    if (exc.name === "AbortError") $("#pg-status").textContent = "stopped";
    else { $("#pg-status").textContent = "failed"; showError(exc); }
  } finally {
    $("#pg-latency").textContent = ms(performance.now() - started);
    $("#pg-send").disabled = false; $("#pg-stop").disabled = true;
    if (!reasoning.textContent) reasoning.textContent = "(none)";
  }
}

// -- sign in and start --------------------------------------------------------------------

const VIEWS = { overview, models, downloads, keys: keysView, settings, playground };

function signOut(message) {
  clearInterval(timer);
  keys.clear();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#admin-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const admin = $("#admin-key").value, client = $("#client-key").value;
  const resp = await fetch("/status", { headers: { Authorization: `Bearer ${admin}` } }).catch(() => null);
  if (!resp) { $("#signin-error").textContent = "The router did not answer; is it running?"; return; }
  if (!resp.ok) { $("#signin-error").textContent = (await errorOf(resp)).message; return; }
  keys.set(admin, client);
  $("#signin-form").reset();
  start();
}

function start() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  go(pageOf(location.pathname), false);
  $(`#h-${current}`).focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  for (const link of document.querySelectorAll("nav a")) link.addEventListener("click", event => {
    event.preventDefault(); go(link.dataset.page);
  });
  window.addEventListener("popstate", () => keys.admin && go(pageOf(location.pathname), false));
  $("#download-form").addEventListener("submit", startDownload);
  $("#key-form").addEventListener("submit", createKey);
  $("#be-discover").addEventListener("click", discover);
  $("#backend-form").addEventListener("submit", saveBackend);
  $("#routing-form").addEventListener("submit", saveRouting);
  $("#chat-form").addEventListener("submit", sendChat);
  $("#pg-stop").addEventListener("click", () => controller && controller.abort());
  window.addEventListener("resize", () => current === "overview" && overview.refresh());
  if (keys.admin) start(); else signOut("");
});
