// jobq dashboard: plain JS, no build step. Talks to the API with a bearer token;
// live updates come from /events, read with fetch() so that the token travels in
// the Authorization header (EventSource cannot send one). Every value from the
// API is put on the page as text (textContent), never as HTML.

const STATUSES = ["pending", "processing", "completed", "failed", "cancelled", "expired"];
const ACTIVE = new Set(["pending", "processing"]);
const FINISHED = ["completed", "failed", "cancelled", "expired"];
const PAGE_SIZE = 25;
const SVG = "http://www.w3.org/2000/svg";
const EXAMPLE_PARAMS = {
  checksum: { megabytes: 32, algorithm: "sha256" },
  compress: { megabytes: 4, level: 6 },
  thumbnail: { zoom: 1 },
  flaky: { fail_rate: 0.5 },
  long_report: { seconds: 60 },
  system_snapshot: {},
};
const TOKEN_KEY = "jobq.token";

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  claims: {},
  service: false,
  filters: { status: "", job_type: "", user_id: "" },
  cursors: [""], // cursor of each page visited; "" = the first page
  page: 0,
  nextCursor: null,
  rows: new Map(), // job id -> <tr>
  selected: null, // the job open in the detail panel
  types: new Set(Object.keys(EXAMPLE_PARAMS)),
  events: null, // AbortController of the /events stream
  timers: {},
  generation: 0, // bumped on sign-out: late answers of an old session are dropped
  paramsEdited: false,
};

// ---------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function statusColor(status) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${status}`).trim() || "#94a3b8";
}

function shortId(id) {
  return String(id).slice(0, 8);
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m}m ${Math.round((ms % 60000) / 1000)}s`;
}

function fmtCount(n) {
  return n >= 10000 ? `${(n / 1000).toFixed(n >= 100000 ? 0 : 1)}k` : String(n);
}

function ago(iso) {
  if (!iso) return "–";
  const secs = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (secs < 5) return "just now";
  if (secs < 60) return `${secs}s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)}h ago`;
  return new Date(iso).toLocaleDateString();
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "–";
}

function toast(message, bad = false) {
  const el = h("div", { class: bad ? "toast bad" : "toast", role: "status", text: message });
  $("toasts").append(el);
  setTimeout(() => el.remove(), bad ? 7000 : 3500);
}

// Run fn at most once per `ms`, the last call winning (trailing edge).
function throttle(name, ms, fn) {
  if (state.timers[name]) return;
  state.timers[name] = setTimeout(() => {
    delete state.timers[name];
    fn();
  }, ms);
}

function decodeClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

// ---------------------------------------------------------------------------
// the API
// ---------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body, params } = {}) {
  const generation = state.generation;
  let url = path;
  if (params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    url += `?${q}`;
  }
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-cache",
  });
  if (generation !== state.generation) throw new ApiError(0, "signed_out", "signed out");
  let data = null;
  if (res.status !== 204) data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = data?.error ?? {};
    const detail = Array.isArray(data?.detail) ? data.detail.map((d) => d.msg).join("; ") : null;
    const e = new ApiError(res.status, err.code ?? `http_${res.status}`, err.message ?? detail ?? res.statusText);
    if (res.status === 401) signOut(e.code === "token_expired" ? "Your token has expired." : `Token refused: ${e.message}`);
    throw e;
  }
  return data;
}

function reportError(e) {
  if (e instanceof ApiError && (e.status === 401 || e.code === "signed_out")) return;
  toast(e.message || String(e), true);
}

// ---------------------------------------------------------------------------
// sign in / out
// ---------------------------------------------------------------------------
async function signIn(token) {
  token = token.trim();
  $("signin-error").textContent = "";
  if (!token) {
    $("signin-error").textContent = "Paste a token first.";
    return;
  }
  state.token = token;
  state.claims = decodeClaims(token);
  state.service = state.claims.role === "service_role";
  try {
    await api("stats/throughput", { params: { minutes: 60 } }); // any signed-in identity may
  } catch (e) {
    state.token = null;
    $("signin-error").textContent = e.message || "sign-in failed";
    showSignin();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  document.body.classList.toggle("service", state.service);
  $("role").textContent = state.service ? "service_role" : "user";
  $("role").classList.toggle("service", state.service);
  $("ident").textContent = state.service ? "every user's jobs" : state.claims.sub ?? "";
  $("ident").title = state.claims.sub ?? "";
  $("jobs-scope").textContent = state.service ? "all users" : "newest first";
  $("signin").hidden = true;
  $("who").hidden = false;
  $("app").hidden = false;
  resetPaging();
  loadJobs();
  loadStats();
  connectEvents();
  state.timers.statsEvery = setInterval(() => loadStats(), 15000);
  state.timers.clock = setInterval(() => refreshTimes(), 10000);
}

function signOut(message = "") {
  state.generation += 1;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  state.events?.abort();
  state.events = null;
  for (const [k, t] of Object.entries(state.timers)) {
    clearTimeout(t);
    clearInterval(t);
    delete state.timers[k];
  }
  closeDetail();
  $("jobs-body").replaceChildren();
  state.rows.clear();
  setLive(false);
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin-error").textContent = message;
  showSignin();
}

function showSignin() {
  $("signin").hidden = false;
  $("token").focus();
}

// ---------------------------------------------------------------------------
// the jobs table
// ---------------------------------------------------------------------------
function resetPaging() {
  state.cursors = [""];
  state.page = 0;
}

async function loadJobs() {
  const f = state.filters;
  const params = { cursor: state.cursors[state.page], limit: PAGE_SIZE, status: f.status, job_type: f.job_type };
  if (state.service) params.user_id = f.user_id;
  let data;
  try {
    data = await api("jobs", { params });
  } catch (e) {
    reportError(e);
    return;
  }
  state.nextCursor = data.next_cursor;
  state.rows.clear();
  const rows = data.jobs.map((job) => {
    const tr = jobRow(job);
    state.rows.set(job.id, tr);
    rememberType(job.job_type);
    return tr;
  });
  $("jobs-body").replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
  $("older").disabled = !state.nextCursor;
  $("newer").disabled = state.page === 0;
  $("page-label").textContent = `page ${state.page + 1}`;
}

function progressBar(status, percent) {
  const bar = h("div", { class: `progress ${status}`, role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": percent });
  const fill = h("div", { class: "fill" });
  fill.style.width = `${percent}%`;
  bar.append(fill, h("span", { class: "label", text: `${percent}%` }));
  return bar;
}

function setProgress(bar, status, percent) {
  bar.className = bar.className.replace(/\b(pending|processing|completed|failed|cancelled|expired)\b/g, "").trim() + ` ${status}`;
  bar.setAttribute("aria-valuenow", percent);
  bar.querySelector(".fill").style.width = `${percent}%`;
  bar.querySelector(".label").textContent = `${percent}%`;
}

function pill(status) {
  return h("span", { class: `pill ${status}`, text: status });
}

function jobRow(job) {
  const tr = h(
    "tr",
    { dataset: { id: job.id, status: job.status }, class: state.selected === job.id ? "selected" : null, onclick: () => openDetail(job.id) },
    h("td", { class: "id", title: job.id, text: shortId(job.id) }),
    h("td", { class: "type", text: job.job_type }),
    h("td", { class: "status" }, pill(job.status)),
    h("td", {}, h("div", { class: "progress-cell" }, progressBar(job.status, job.progress_percent), h("span", { class: "pct", text: `${job.progress_percent}%` }))),
    h("td", { class: "tries", text: `${job.attempts}/${job.max_retries + 1}` }),
    h("td", { class: "id service-only", title: job.user_id, text: shortId(job.user_id) }),
    h("td", { class: "created", title: job.created_at, dataset: { at: job.created_at }, text: ago(job.created_at) }),
  );
  return tr;
}

function updateRow(ev) {
  const tr = state.rows.get(ev.job_id);
  if (!tr) return;
  tr.dataset.status = ev.status;
  tr.querySelector("td.status").replaceChildren(pill(ev.status));
  setProgress(tr.querySelector(".progress"), ev.status, ev.progress_percent);
  tr.querySelector(".pct").textContent = `${ev.progress_percent}%`;
  const tries = tr.querySelector("td.tries");
  tries.textContent = `${ev.attempts}/${tries.textContent.split("/")[1]}`;
}

function refreshTimes() {
  for (const td of document.querySelectorAll("td.created")) td.textContent = ago(td.dataset.at);
}

function rememberType(t) {
  if (!t || state.types.has(t)) return;
  state.types.add(t);
  renderTypeList();
}

function renderTypeList() {
  $("known-types").replaceChildren(...[...state.types].sort().map((t) => h("option", { value: t })));
}

function setFilter(name, value) {
  state.filters[name] = value;
  if (name === "status") $("filter-status").value = value;
  if (name === "job_type") $("filter-type").value = value;
  resetPaging();
  loadJobs();
  loadStats();
}

// ---------------------------------------------------------------------------
// the detail panel
// ---------------------------------------------------------------------------
async function openDetail(id) {
  state.selected = id;
  for (const [rid, tr] of state.rows) tr.classList.toggle("selected", rid === id);
  $("detail").hidden = false;
  document.querySelector(".work").classList.remove("no-detail");
  $("log-search").value = "";
  $("log-level").value = "";
  await Promise.all([loadDetail(), loadLogs()]);
}

function closeDetail() {
  state.selected = null;
  $("detail").hidden = true;
  document.querySelector(".work")?.classList.add("no-detail");
  for (const tr of state.rows.values()) tr.classList.remove("selected");
}

async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  let job;
  try {
    job = await api(`jobs/${id}`);
  } catch (e) {
    if (e.status === 404) closeDetail();
    reportError(e);
    return;
  }
  if (state.selected !== id) return;
  renderDetail(job);
}

function renderDetail(job) {
  const bar = $("detail-progress");
  if ($("detail").dataset.id !== job.id) {
    // another job: jump to its progress instead of animating from the last one's
    bar.classList.add("instant");
    requestAnimationFrame(() => requestAnimationFrame(() => bar.classList.remove("instant")));
  }
  $("detail").dataset.id = job.id;
  $("detail").dataset.status = job.status;
  $("detail-type").textContent = job.job_type;
  $("detail-id").textContent = job.id;
  const st = $("detail-status");
  st.className = `pill ${job.status}`;
  st.textContent = job.status;
  setProgress(bar, job.status, job.progress_percent);
  $("detail-message").textContent = job.progress_message ?? "";
  $("detail-cancel").disabled = !ACTIVE.has(job.status);
  $("detail-retry").disabled = job.status !== "failed";
  const run = job.started_at && job.completed_at ? new Date(job.completed_at) - new Date(job.started_at) : null;
  const facts = [
    ["attempts", `${job.attempts} of ${job.max_retries + 1}`],
    ["priority", job.priority],
    state.service ? ["user", job.user_id] : null,
    ["created", `${clock(job.created_at)} (${ago(job.created_at)})`],
    ["started", clock(job.started_at)],
    ["finished", clock(job.completed_at)],
    ["run time", run === null ? "–" : fmtMs(run)],
    job.worker_id ? ["worker", job.worker_id] : null,
    job.next_retry_at ? ["next retry", `${clock(job.next_retry_at)} (${ago(job.next_retry_at).replace(" ago", "")})`] : null,
  ].filter(Boolean);
  $("detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]));
  const err = $("detail-error");
  err.hidden = !job.error_message;
  err.replaceChildren(...(job.error_message ? [h("b", { text: job.error_code ?? "ERROR" }), job.error_message] : []));
  const hasResult = job.result !== null && job.result !== undefined;
  $("detail-result-wrap").hidden = !hasResult;
  const thumb = $("detail-thumb");
  const src = hasResult && typeof job.result.thumbnail === "string" && job.result.thumbnail.startsWith("data:image/png;base64,") ? job.result.thumbnail : null;
  thumb.hidden = !src;
  if (src) thumb.src = src;
  if (hasResult) {
    const shown = src ? { ...job.result, thumbnail: "(the image above)" } : job.result;
    $("detail-result").textContent = JSON.stringify(shown, null, 2);
  }
  $("detail-params").textContent = JSON.stringify(job.params, null, 2);
}

function applyEventToDetail(ev) {
  if (ev.job_id !== state.selected) return;
  const d = $("detail");
  const changed = d.dataset.status !== ev.status;
  d.dataset.status = ev.status;
  const st = $("detail-status");
  st.className = `pill ${ev.status}`;
  st.textContent = ev.status;
  setProgress($("detail-progress"), ev.status, ev.progress_percent);
  $("detail-message").textContent = ev.progress_message ?? "";
  $("detail-cancel").disabled = !ACTIVE.has(ev.status);
  $("detail-retry").disabled = ev.status !== "failed";
  if (changed) loadDetail(); // result, error, timestamps
  throttle("logs", 800, loadLogs);
}

async function loadLogs() {
  const id = state.selected;
  if (!id) return;
  const q = $("log-search").value.trim();
  let data;
  try {
    data = await api(`jobs/${id}/logs`, { params: { limit: 200, q, level: $("log-level").value } });
  } catch (e) {
    reportError(e);
    return;
  }
  if (state.selected !== id || q !== $("log-search").value.trim()) return;
  const items = data.logs.map((l) =>
    h(
      "li",
      { dataset: { level: l.level }, title: Object.keys(l.metadata).length ? JSON.stringify(l.metadata) : null },
      h("span", { class: "t", text: clock(l.created_at) }),
      h("span", { class: `lvl ${l.level}`, text: l.level }),
      h("span", { class: "msg", text: l.message }),
    ),
  );
  $("logs").replaceChildren(...(items.length ? items : [h("li", { class: "none", text: q ? `no log line matches “${q}”` : "no log lines yet" })]));
  $("logs-count").textContent = q ? `${data.total_count} matching` : `${data.total_count}`;
}

async function act(action) {
  const id = state.selected;
  try {
    const res = await api(`jobs/${id}/${action}`, { method: "POST" });
    toast(`${action === "cancel" ? "Cancelled" : "Retrying"} ${shortId(id)}: ${res.status}`);
  } catch (e) {
    reportError(e);
  }
  await loadDetail();
}

// ---------------------------------------------------------------------------
// enqueue
// ---------------------------------------------------------------------------
async function enqueue(ev) {
  ev.preventDefault();
  $("enqueue-error").textContent = "";
  let params;
  try {
    params = JSON.parse($("enqueue-params").value || "{}");
  } catch (e) {
    $("enqueue-error").textContent = `params is not JSON: ${e.message}`;
    return;
  }
  const body = {
    job_type: $("enqueue-type").value.trim(),
    params,
    priority: Number($("enqueue-priority").value || 0),
    max_retries: Number($("enqueue-retries").value || 0),
  };
  if (state.service && $("enqueue-user").value.trim()) body.user_id = $("enqueue-user").value.trim();
  try {
    const res = await api("jobs", { method: "POST", body });
    toast(`Enqueued ${body.job_type} ${shortId(res.job_id)}`);
    rememberType(body.job_type);
    resetPaging();
    await loadJobs();
    await openDetail(res.job_id);
  } catch (e) {
    $("enqueue-error").textContent = e.message;
  }
}

function prefillParams() {
  const t = $("enqueue-type").value.trim();
  if (t in EXAMPLE_PARAMS) $("enqueue-params").value = JSON.stringify(EXAMPLE_PARAMS[t]);
}

// ---------------------------------------------------------------------------
// stats and charts
// ---------------------------------------------------------------------------
async function loadStats() {
  const scopeUser = state.service && state.filters.user_id ? state.filters.user_id : "";
  try {
    const throughput = await api("stats/throughput", { params: { minutes: 60, user_id: scopeUser } });
    let counts; // [{job_type, status, job_count}]
    if (state.service && !scopeUser) {
      // Unfinished work from the depth index; finished jobs of the last hour from the
      // throughput window: both read an index, however large the table is.
      const depth = await api("stats/depth");
      counts = depth.depth.slice();
      for (const r of throughput.per_type) for (const st of FINISHED) if (st !== "failed" && r[st]) counts.push({ job_type: r.job_type, status: st, job_count: r[st] });
      $("status-scope").textContent = "queue + last hour";
    } else {
      const stats = await api("stats", { params: { user_id: scopeUser } });
      counts = stats.stats;
      $("status-scope").textContent = scopeUser ? `user ${shortId(scopeUser)}` : "all time";
    }
    $("types-scope").textContent = $("status-scope").textContent;
    for (const r of counts) rememberType(r.job_type);
    renderStatus(counts);
    renderTypes(counts);
    renderThroughput(throughput);
    renderDurations(throughput);
  } catch (e) {
    reportError(e);
  }
}

function renderStatus(counts) {
  const by = Object.fromEntries(STATUSES.map((st) => [st, 0]));
  for (const r of counts) by[r.status] += r.job_count;
  const total = Object.values(by).reduce((a, b) => a + b, 0);
  const bar = h("div", { class: "stackbar", role: "img", "aria-label": STATUSES.map((st) => `${st} ${by[st]}`).join(", ") });
  for (const st of STATUSES) {
    if (!by[st]) continue;
    const seg = h("span", { class: `bg-${st}`, title: `${st}: ${by[st]}` });
    seg.style.width = `${(100 * by[st]) / total}%`;
    bar.append(seg);
  }
  const legend = h(
    "ul",
    { class: "legend" },
    STATUSES.map((st) =>
      h(
        "li",
        { class: state.filters.status === st ? "active" : null, dataset: { status: st }, title: `show ${st} jobs`, onclick: () => setFilter("status", state.filters.status === st ? "" : st) },
        h("span", { class: `dot bg-${st}` }),
        st,
        h("span", { class: "n", text: fmtCount(by[st]) }),
      ),
    ),
  );
  $("chart-status").replaceChildren(h("div", { class: "kpis" }, h("span", {}, h("b", { text: fmtCount(total) }), "jobs")), bar, legend);
}

function renderTypes(counts) {
  const types = new Map();
  for (const r of counts) {
    if (!types.has(r.job_type)) types.set(r.job_type, Object.fromEntries(STATUSES.map((st) => [st, 0])));
    types.get(r.job_type)[r.status] += r.job_count;
  }
  const rows = [...types.entries()].map(([t, by]) => [t, by, Object.values(by).reduce((a, b) => a + b, 0)]).sort((a, b) => b[2] - a[2]).slice(0, 7);
  if (!rows.length) {
    $("chart-types").replaceChildren(h("div", { class: "none", text: "no jobs yet" }));
    return;
  }
  const max = rows[0][2];
  const list = h(
    "ul",
    { class: "types" },
    rows.map(([t, by, total]) => {
      const bar = h("div", { class: "stackbar" });
      bar.style.width = `${Math.max(4, (100 * total) / max)}%`;
      for (const st of STATUSES) {
        if (!by[st]) continue;
        const seg = h("span", { class: `bg-${st}`, title: `${st}: ${by[st]}` });
        seg.style.width = `${(100 * by[st]) / total}%`;
        bar.append(seg);
      }
      return h("li", { title: `show ${t} jobs`, onclick: () => setFilter("job_type", state.filters.job_type === t ? "" : t) }, h("span", { class: "name", text: t }), h("div", {}, bar), h("span", { class: "n", text: fmtCount(total) }));
    }),
  );
  $("chart-types").replaceChildren(list);
}

// The last 60 minutes, one slot per minute (minutes without a finish are zero).
function minuteSlots(throughput) {
  const now = Math.floor(Date.now() / 60000) * 60000;
  const by = new Map(throughput.per_minute.map((r) => [new Date(r.bucket).getTime(), r]));
  const slots = [];
  for (let i = 59; i >= 0; i--) {
    const t = now - i * 60000;
    slots.push({ t, row: by.get(t) ?? null });
  }
  return slots;
}

function niceMax(v) {
  if (v <= 5) return 5;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function axes(svg, W, H, pad, max, label) {
  for (const f of [0, 0.5, 1]) {
    const y = pad.t + (H - pad.t - pad.b) * (1 - f);
    svg.append(s("line", { class: "grid", x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
    svg.append(s("text", { class: "axis", x: pad.l - 6, y: y + 3, "text-anchor": "end" }, label(max * f)));
  }
  for (const [f, text] of [[0, "-60m"], [0.5, "-30m"], [1, "now"]]) {
    svg.append(s("text", { class: "axis", x: pad.l + (W - pad.l - pad.r) * f, y: H - 4, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" }, text));
  }
}

// An SVG drawn at the container's real size (no stretched text).
function chartSvg(container, label) {
  const W = Math.max(240, Math.round(container.clientWidth || 360));
  const H = 132;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": label });
  return [svg, W, H];
}

function renderThroughput(throughput) {
  const slots = minuteSlots(throughput);
  const pad = { l: 30, r: 4, t: 8, b: 18 };
  const peak = Math.max(0, ...slots.map(({ row }) => (row ? row.completed + row.failed + row.cancelled + row.expired : 0)));
  const max = niceMax(peak);
  const [svg, W, H] = chartSvg($("chart-throughput"), "jobs finished per minute");
  axes(svg, W, H, pad, max, (v) => fmtCount(Math.round(v)));
  const cw = (W - pad.l - pad.r) / slots.length;
  const plotH = H - pad.t - pad.b;
  slots.forEach(({ t, row }, i) => {
    if (!row) return;
    let y = pad.t + plotH;
    for (const st of ["completed", "failed", "cancelled", "expired"]) {
      if (!row[st]) continue;
      const hgt = (plotH * row[st]) / max;
      y -= hgt;
      const rect = s("rect", { x: pad.l + i * cw + 0.8, y, width: Math.max(1, cw - 1.6), height: hgt, rx: 1.5, fill: statusColor(st) });
      rect.append(s("title", {}, `${new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })}  ${st}: ${row[st]}`));
      svg.append(rect);
    }
  });
  const tot = throughput.total;
  const rate = (tot.completed + tot.failed) / 60;
  $("chart-throughput").replaceChildren(
    h("div", { class: "kpis" }, h("span", {}, h("b", { text: fmtCount(tot.completed) }), "completed"), h("span", {}, h("b", { text: fmtCount(tot.failed) }), "failed"), h("span", {}, h("b", { text: rate.toFixed(1) }), "/ min")),
    svg,
  );
}

function renderDurations(throughput) {
  const slots = minuteSlots(throughput);
  const pad = { l: 44, r: 4, t: 8, b: 18 };
  const values = slots.flatMap(({ row }) => (row ? [row.p50_duration_ms, row.p95_duration_ms] : [])).filter((v) => v !== null);
  const max = niceMax(Math.max(1, ...values));
  const [svg, W, H] = chartSvg($("chart-durations"), "p50 and p95 run time per minute");
  axes(svg, W, H, pad, max, fmtMs);
  const cw = (W - pad.l - pad.r) / slots.length;
  const plotH = H - pad.t - pad.b;
  for (const [key, color] of [["p95_duration_ms", "#f97316"], ["p50_duration_ms", "#4f46e5"]]) {
    const pts = [];
    slots.forEach(({ t, row }, i) => {
      if (!row || row[key] === null) return;
      pts.push([pad.l + i * cw + cw / 2, pad.t + plotH * (1 - row[key] / max), t, row[key]]);
    });
    if (pts.length > 1) svg.append(s("polyline", { points: pts.map(([x, y]) => `${x},${y}`).join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round", "vector-effect": "non-scaling-stroke" }));
    for (const [x, y, t, v] of pts) {
      const c = s("circle", { cx: x, cy: y, r: 2.4, fill: color });
      c.append(s("title", {}, `${new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false })}  ${key.slice(0, 3)}: ${fmtMs(v)}`));
      svg.append(c);
    }
  }
  const tot = throughput.total;
  $("chart-durations").replaceChildren(
    h("div", { class: "kpis" }, h("span", {}, h("b", { text: fmtMs(tot.p50_duration_ms) }), "p50"), h("span", {}, h("b", { text: fmtMs(tot.p95_duration_ms) }), "p95")),
    svg,
    h("div", { class: "chart-legend" }, h("span", {}, dot("#4f46e5"), "p50"), h("span", {}, dot("#f97316"), "p95")),
  );
}

function dot(color) {
  const el = h("span", { class: "dot" });
  el.style.background = color;
  return el;
}

// ---------------------------------------------------------------------------
// live events: /events read with fetch() (the token goes in a header)
// ---------------------------------------------------------------------------
function setLive(on) {
  const el = $("live");
  el.classList.toggle("on", on);
  el.classList.toggle("off", !on);
  el.textContent = on ? "live" : "reconnecting";
}

async function connectEvents() {
  const generation = state.generation;
  let delay = 1000;
  while (generation === state.generation && state.token) {
    const controller = new AbortController();
    state.events = controller;
    try {
      const res = await fetch("events", { headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" }, signal: controller.signal, cache: "no-store" });
      if (res.status === 401) {
        const data = await res.json().catch(() => ({}));
        signOut(data?.error?.code === "token_expired" ? "Your token has expired." : "Token refused.");
        return;
      }
      if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
      setLive(true);
      delay = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          if (handleFrame(block) === "stop") return;
        }
      }
    } catch (e) {
      if (controller.signal.aborted || generation !== state.generation) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
    if (generation === state.generation) {
      loadJobs(); // events may have been missed while away
      loadStats();
    }
  }
}

function handleFrame(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (event === "token_expired") {
    signOut("Your token has expired.");
    return "stop";
  }
  if (event === "resync") {
    loadJobs();
    loadStats();
    if (state.selected) loadDetail();
    return null;
  }
  if (event !== "job" || !data.length) return null;
  let ev;
  try {
    ev = JSON.parse(data.join("\n"));
  } catch {
    return null;
  }
  onJobEvent(ev);
  return null;
}

function onJobEvent(ev) {
  rememberType(ev.job_type);
  updateRow(ev);
  applyEventToDetail(ev);
  const f = state.filters;
  const matches = (!f.status || f.status === ev.status) && (!f.job_type || f.job_type === ev.job_type) && (!f.user_id || f.user_id === ev.user_id);
  const shown = state.rows.has(ev.job_id);
  // New jobs (or jobs entering/leaving a status filter) change the first page: reload it.
  if (state.page === 0 && ((matches && !shown) || (shown && f.status && !matches))) throttle("jobs", 1500, loadJobs);
  if (ev.event === "insert" || ev.status !== "processing") throttle("stats", 2500, loadStats);
}

// ---------------------------------------------------------------------------
// wiring
// ---------------------------------------------------------------------------
// jobq up hands over a token in the fragment (never sent to the server): prefill the
// sign-in form with it and take it out of the address bar.
function tokenFromHash() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (!token) return false;
  history.replaceState(null, "", location.pathname + location.search);
  $("token").value = token;
  showSignin();
  return true;
}

function init() {
  renderTypeList();
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value);
  });
  $("signout").addEventListener("click", () => signOut());
  $("filter-status").addEventListener("change", (e) => setFilter("status", e.target.value));
  $("filter-type").addEventListener("change", (e) => setFilter("job_type", e.target.value.trim()));
  $("filter-user").addEventListener("change", (e) => setFilter("user_id", e.target.value.trim()));
  $("older").addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    loadJobs();
  });
  $("newer").addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    loadJobs();
  });
  $("new-job").addEventListener("click", () => {
    $("enqueue").hidden = !$("enqueue").hidden;
    if (!$("enqueue").hidden) $("enqueue-type").focus();
  });
  $("enqueue-cancel").addEventListener("click", () => {
    $("enqueue").hidden = true;
    state.paramsEdited = false;
  });
  $("enqueue").addEventListener("submit", enqueue);
  // example params follow the type until the params are edited by hand
  $("enqueue-params").addEventListener("input", () => (state.paramsEdited = true));
  $("enqueue-type").addEventListener("input", () => state.paramsEdited || prefillParams());
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-cancel").addEventListener("click", () => act("cancel"));
  $("detail-retry").addEventListener("click", () => act("retry"));
  $("log-search").addEventListener("input", () => throttle("logsearch", 250, loadLogs));
  $("log-level").addEventListener("change", loadLogs);
  document.querySelector(".work").classList.add("no-detail");

  window.addEventListener("hashchange", () => {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (!token) return;
    if (state.token) signOut();
    tokenFromHash();
  });
  if (tokenFromHash()) return;
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    $("token").value = saved;
    signIn(saved);
  } else {
    showSignin();
  }
}

init();
