// The discovery service's web page: a tenant's jobs and batches, live progress, attempts, solution and curve.
// Plain JavaScript, no build step, no dependencies. Everything comes from the /v1 API with the key the user typed
// (kept in sessionStorage, sent as a Bearer token). Live progress reads the job's Server-Sent Events through
// fetch(), because EventSource cannot send an Authorization header. Text from problems and models is only ever
// set with textContent: the page never parses it as HTML.
"use strict";

const API = new URL("../v1/", location.href); // the page is served at <root>/ui/
const KEY = "sdpo.apiKey";
const TERMINAL = new Set(["succeeded", "exhausted", "failed", "cancelled"]);
const WITH_CURVE = new Set(["succeeded", "exhausted"]);
const EXAMPLE = {
  id: "arithmetic",
  prompt: "What is 17 * 23? Answer with the number only.",
  verifier: { type: "numeric", answer: 391 },
};
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let view = null; // {kind: "job" | "batch", id}
let live = null; // AbortController of the open event stream
let shownAttempts = 0;

// ---- the API ---------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Authorization", `Bearer ${sessionStorage.getItem(KEY) || ""}`);
  if (options.body) headers.set("Content-Type", "application/json");
  const response = await fetch(new URL(path, API), { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) { /* not a problem+json body */ }
    if (response.status === 401) signOut(detail);
    throw new ApiError(response.status, detail);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();

// ---- Server-Sent Events over fetch --------------------------------------------------------------------------------
function parseEvent(block) {
  const event = { id: null, type: "message", data: null };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") event.id = value;
    else if (field === "event") event.type = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  event.data = JSON.parse(data.join("\n"));
  return event;
}

// Call onEvent for each event of the job until the server ends the stream (the job finished) or `signal` aborts.
// A dropped connection is resumed after the last event seen (Last-Event-ID), with backoff.
async function follow(jobId, onEvent, signal) {
  let lastId = null;
  for (let failures = 0; !signal.aborted; ) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(`jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer = (buffer + value).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (event) {
            lastId = event.id || lastId;
            failures = 0;
            await onEvent(event);
          }
        }
      }
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && error.status < 500)) return;
      failures += 1;
      await sleep(Math.min(500 * 2 ** failures, 10000));
    }
  }
}

function stopLive() {
  if (live) live.abort();
  live = null;
}

// ---- small DOM helpers ------------------------------------------------------------------------------------------
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells, onClick) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  if (onClick) {
    tr.classList.add("clickable");
    tr.addEventListener("click", onClick);
  }
  return tr;
}

function status(value) {
  return el("span", value, `status ${value}`);
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function shortId(id) {
  return id.length > 16 ? `${id.slice(0, 4)}…${id.slice(-8)}` : id;
}

function shorten(text) {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

function problemLabel(problem) {
  if (problem.id) return problem.id;
  return shorten(problem.prompt || (problem.messages || []).map((m) => m.content).join(" "));
}

// A listing's job carries no problem, only its label and the start of its question; a job read alone has both.
function summaryLabel(job) {
  return job.problem ? problemLabel(job.problem) : job.problem_id || shorten(job.question);
}

// ---- sign in and out ----------------------------------------------------------------------------------------------
function signOut(reason) {
  stopLive();
  sessionStorage.removeItem(KEY);
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("whoami").textContent = "";
  showError("key-error", reason ? `The API refused the key: ${reason}` : "");
}

async function signIn() {
  try {
    await getJson("jobs?limit=1"); // checks the key
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError("key-error", String(error));
    return;
  }
  showError("key-error", "");
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("whoami").textContent = "signed in with a key";
  await refreshLists();
}

// ---- the lists ----------------------------------------------------------------------------------------------------
function jobRow(job) {
  const tr = row([shortId(job.id), summaryLabel(job), status(job.status), `${job.attempts}/${job.budget}`,
    job.first_success_attempt ?? ""], () => showJob(job.id));
  tr.dataset.id = job.id;
  return tr;
}

async function refreshLists() {
  const [jobs, batches] = await Promise.all([getJson("jobs?limit=50"), getJson("batches?limit=20")]);
  $("jobs").tBodies[0].replaceChildren(...jobs.data.map(jobRow));
  $("batches").tBodies[0].replaceChildren(...batches.data.map((batch) => row(
    [shortId(batch.id), status(batch.status), batch.job_ids.length,
      Object.entries(batch.counts).map(([k, v]) => `${k} ${v}`).join(", ")],
    () => showBatch(batch.id))));
}

function show(which) {
  $("nothing").hidden = which !== null;
  $("job-view").hidden = which !== "job";
  $("batch-view").hidden = which !== "batch";
}

// ---- one job --------------------------------------------------------------------------------------------------------
function renderJob(job) {
  $("job-id").textContent = job.id;
  $("job-status").replaceWith(Object.assign(status(job.status), { id: "job-status" }));
  $("job-problem").textContent = problemLabel(job.problem);
  $("job-method").textContent = job.method;
  renderProgress(job.attempts, job.budget, job.best_reward);
  $("job-baseline").textContent = job.baseline
    ? `${job.baseline.successes} solved of ${job.baseline.samples} samples` +
      (job.baseline.state ? ` (${job.baseline.state}` +
        (job.baseline.reused_samples ? `, ${job.baseline.reused_samples} reused` : "") + ")" : "")
    : "none";
  showError("job-error", job.error ? `${job.error.code}: ${job.error.message}` : "");
  const comparing = job.baseline && ["pending", "running"].includes(job.baseline.state);
  $("cancel-job").hidden = TERMINAL.has(job.status) && !comparing; // a final job's cancel stops its comparison
}

function renderProgress(attempts, budget, bestReward) {
  $("job-progress").max = budget;
  $("job-progress").value = attempts;
  $("job-attempts").textContent = `${attempts} of ${budget}`;
  $("job-reward").textContent = Number(bestReward).toFixed(3);
}

// Attempt pages are loaded one run at a time per job (so no row is added twice); a request made while one runs
// makes it go round once more, so the table always catches up with the last event.
let attemptsRun = null; // {jobId, promise, again}

function refreshAttempts(jobId) {
  if (attemptsRun && attemptsRun.jobId === jobId) {
    attemptsRun.again = true;
    return attemptsRun.promise;
  }
  const run = { jobId, again: false, promise: null };
  run.promise = (async () => {
    do {
      run.again = false;
      await loadAttempts(jobId);
    } while (run.again && view?.id === jobId);
  })().finally(() => { if (attemptsRun === run) attemptsRun = null; });
  attemptsRun = run;
  return run.promise;
}

async function loadAttempts(jobId) {
  const body = $("attempts").tBodies[0];
  for (let more = true; more && view?.id === jobId; ) {
    const page = await getJson(`jobs/${encodeURIComponent(jobId)}/attempts?after=${shownAttempts}&limit=200`);
    if (view?.id !== jobId) return;
    for (const a of page.data) {
      const tr = row([a.index, a.step, a.reward.toFixed(2), a.solved ? "yes" : "", el("pre", a.text),
        el("pre", a.feedback)]);
      if (a.solved) tr.classList.add("solved");
      body.append(tr);
    }
    shownAttempts += page.data.length;
    more = page.has_more && page.data.length > 0;
  }
  $("attempt-count").textContent = `(${shownAttempts})`;
}

function addEventLine(event) {
  const list = $("events");
  const d = event.data || {};
  let text = event.type;
  if (event.type === "status") text += `: ${d.status}${d.reason ? ` (${d.reason})` : ""}`;
  else if (event.type === "progress" && d.type === "decision") text += `: ${d.run} decision after step ${d.step}: ${d.reason}`;
  else if (event.type === "progress") text += `: ${d.run} ${d.type} ${d.step}, ${d.attempts}/${d.max_attempts} attempts`;
  else if (event.type === "resumed") text += `: ${d.attempts} attempts from the checkpoint`;
  else if (event.type === "baseline") text += `: best-of-k ${d.baseline_state}, ${d.baseline_samples} samples`;
  const at = d.at ? new Date(d.at * 1000).toLocaleTimeString() : "";
  list.append(el("li", `${at} ${text}`.trim()));
  while (list.children.length > 300) list.firstChild.remove();
}

function onJobEvent(jobId, event) {
  if (view?.id !== jobId) return;
  addEventLine(event);
  const d = event.data || {};
  if (event.type === "progress" && d.run === "method") {
    renderProgress(d.attempts, d.max_attempts, d.best_reward);
    refreshAttempts(jobId);
  } else if (event.type === "status") {
    return reloadJob(jobId);
  }
}

async function reloadJob(jobId) {
  const job = await getJson(`jobs/${encodeURIComponent(jobId)}`);
  if (view?.id !== jobId) return;
  renderJob(job);
  if (TERMINAL.has(job.status)) {
    await refreshAttempts(jobId); // lets a load already under way finish...
    await refreshAttempts(jobId); // ...then reads whatever it could not have seen
    await showResults(job);
    $("job-live").textContent = `finished: ${job.status}`;
    await refreshLists();
    // the event stream ends with the job's outcome; its best-of-k comparison may still be drawing: poll it
    if (job.baseline && ["pending", "running"].includes(job.baseline.state)) {
      $("job-live").textContent += ", best-of-k comparison still drawing";
      setTimeout(() => reloadJob(jobId), 2000);
    }
  }
}

async function showResults(job) {
  const solution = $("solution");
  if (job.first_success_attempt) {
    const found = await getJson(`jobs/${encodeURIComponent(job.id)}/solution`);
    solution.replaceChildren(
      el("p", `Verified at attempt ${found.attempt.index} (step ${found.attempt.step}), reward ${found.attempt.reward}.`),
      el("pre", found.attempt.text, "solution-text"));
  } else {
    solution.replaceChildren(el("p", TERMINAL.has(job.status) ? "No verified solution." : "None yet.", "muted"));
  }
  if (WITH_CURVE.has(job.status)) {
    const curve = await getJson(`jobs/${encodeURIComponent(job.id)}/curve`);
    drawCurve($("job-curve"), curve.comparison.curves, curve.comparison.budget);
    $("job-curve-note").textContent = curve.comparison.note;
  }
}

async function showJob(jobId) {
  stopLive();
  view = { kind: "job", id: jobId };
  shownAttempts = 0;
  show("job");
  $("attempts").tBodies[0].replaceChildren();
  $("events").replaceChildren();
  $("solution").replaceChildren(el("p", "None yet.", "muted"));
  $("job-curve").replaceChildren(el("p", "Drawn when the job has succeeded or spent its budget.", "muted"));
  $("job-curve-note").textContent = "";
  const job = await getJson(`jobs/${encodeURIComponent(jobId)}`);
  renderJob(job);
  await refreshAttempts(jobId);
  if (TERMINAL.has(job.status)) {
    $("job-live").textContent = `finished: ${job.status}`;
    await showResults(job);
    return;
  }
  $("job-live").textContent = "following the event stream";
  const controller = (live = new AbortController());
  follow(jobId, (event) => onJobEvent(jobId, event), controller.signal)
    .then(() => controller.signal.aborted || reloadJob(jobId))
    .catch((error) => { $("job-live").textContent = `stream stopped: ${error}`; });
}

// ---- one batch ------------------------------------------------------------------------------------------------------
async function showBatch(batchId) {
  stopLive();
  view = { kind: "batch", id: batchId };
  show("batch");
  const batch = await getJson(`batches/${encodeURIComponent(batchId)}`);
  $("batch-id").textContent = batch.id;
  $("batch-status").replaceWith(Object.assign(status(batch.status), { id: "batch-status" }));
  $("batch-counts").textContent = Object.entries(batch.counts).map(([k, v]) => `${v} ${k}`).join(", ");
  const jobs = await Promise.all(batch.job_ids.map((id) => getJson(`jobs/${encodeURIComponent(id)}`)));
  $("batch-jobs").tBodies[0].replaceChildren(...jobs.map(jobRow));
  if (batch.curve) {
    drawCurve($("batch-curve"), batch.curve.curves, batch.curve.budget);
    $("batch-curve-note").textContent = batch.curve.note;
  }
}

// ---- the discovery curve ------------------------------------------------------------------------------------------
// discovery@k against k on a log scale, one step line and confidence band per curve (as the API's curve.svg draws).
const COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawCurve(container, curves, budget) {
  const W = 560, H = 300, L = 50, R = 120, T = 15, B = 40;
  const kMax = Math.max(budget, 2);
  const x = (k) => L + (W - L - R) * (Math.log10(Math.max(k, 1)) / Math.log10(kMax));
  const y = (p) => T + (H - T - B) * (1 - p);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
    "aria-label": "discovery curve against best-of-k" });
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), class: "grid" }));
    chart.append(svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end" }, p.toFixed(2)));
  }
  const ticks = [];
  for (let k = 1; k * 2 < kMax; k *= 4) ticks.push(k); // powers of 4, then the budget itself
  for (const k of [...ticks, budget]) {
    chart.append(svg("text", { x: x(k), y: H - B + 16, "text-anchor": "middle" }, String(k)));
  }
  chart.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "attempts k"));
  curves.forEach((curve, i) => {
    const color = COLORS[i % COLORS.length];
    const steps = (values) => {
      const points = [];
      curve.ks.forEach((k, j) => {
        if (j) points.push([x(k), y(values[j - 1])]);
        points.push([x(k), y(values[j])]);
      });
      return points;
    };
    const high = steps(curve.high), low = steps(curve.low).reverse();
    chart.append(svg("polygon", { points: [...high, ...low].map((p) => p.join(",")).join(" "), fill: color,
      "fill-opacity": "0.15", stroke: "none" }));
    chart.append(svg("polyline", { points: steps(curve.mean).map((p) => p.join(",")).join(" "), fill: "none",
      stroke: color, "stroke-width": "2", class: "curve-line" }));
    chart.append(svg("text", { x: W - R + 8, y: T + 14 + 18 * i, fill: color }, curve.label));
  });
  container.replaceChildren(chart);
}

// ---- wiring ---------------------------------------------------------------------------------------------------------
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  $("api-key").value = "";
  signIn();
});
$("sign-out").addEventListener("click", () => signOut());
$("refresh").addEventListener("click", () => refreshLists());
$("cancel-job").addEventListener("click", async () => {
  if (view?.kind !== "job") return;
  await api(`jobs/${encodeURIComponent(view.id)}/cancel`, { method: "POST" });
  await reloadJob(view.id);
});
$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("submit-error", "");
  let body;
  try {
    body = { problem: JSON.parse($("problem").value), method: $("method").value, budget: Number($("budget").value) };
    const settings = $("settings").value.trim();
    if (settings) body.settings = JSON.parse(settings);
  } catch (error) {
    showError("submit-error", `Not valid JSON: ${error.message}`);
    return;
  }
  if (!$("baseline").checked) body.baselines = [];
  try {
    const job = await (await api("jobs", { method: "POST", body: JSON.stringify(body) })).json();
    await refreshLists();
    await showJob(job.id);
  } catch (error) {
    showError("submit-error", error instanceof ApiError ? error.detail : String(error));
  }
});

// ---- the methods: the API's own list (the OpenAPI enum of settings.method), so a new method shows up by itself ----
async function loadMethods() {
  const spec = await (await fetch(new URL("../openapi.json", location.href))).json();
  const field = spec.components.schemas.RunSettings.properties.method;
  $("method").replaceChildren(...field.enum.map((name) => {
    const option = el("option", name);
    option.value = name;
    option.selected = name === field.default;
    return option;
  }));
}

$("problem").value = JSON.stringify(EXAMPLE, null, 2);
loadMethods().catch(() => {}); // the page still submits with its default method
setInterval(() => { if (!$("app").hidden) refreshLists().catch(() => {}); }, 5000);
if (sessionStorage.getItem(KEY)) signIn();
