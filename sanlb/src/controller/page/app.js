// The sanlb status page: polls /v1/status and /v1/history (the session
// cookie authenticates; no token here) and renders them. Every value goes
// into the page as text (textContent), never as HTML.
"use strict";

// One colour per gateway, by its place in the name order: lines and legend
// (LINE), load bars (BAR, other shades, so a screenshot can tell them apart).
const LINE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const BAR = ["#0b4f8a", "#c25400", "#1b7a1b", "#a31515", "#6a3d9a", "#5c3a2e", "#b03a8c", "#4d4d4d", "#8a8b00", "#0f8796"];
const MIB = 1 << 20;
const POLL_MS = 2000;

const sanlb = { status: null, raw: "", history: null, renders: 0, errors: 0 };
window.sanlb = sanlb;

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function num(text) { return el("td", text, "num"); }
function mib(bytes) { return (Math.max(0, bytes) / MIB).toFixed(1) + " MiB/s"; }
function secs(ms) { return ms === null || ms === undefined ? "–" : (ms / 1000).toFixed(1) + " s"; }
function clock(ms) { return new Date(ms).toISOString().substring(11, 19) + " UTC"; }
function fill(tbody, rows, cols, empty) {
  tbody.replaceChildren(...rows);
  // Headers of numeric columns align with their figures.
  const head = tbody.parentElement.tHead;
  if (head && rows.length) {
    const ths = head.rows[0].cells;
    const tds = rows[0].cells;
    for (let i = 0; i < ths.length && i < tds.length; i++) {
      ths[i].classList.toggle("num", tds[i].classList.contains("num"));
    }
  }
  if (rows.length === 0) {
    const td = el("td", empty, "empty");
    td.colSpan = cols;
    tbody.appendChild(row([td]));
  }
}

function colourIndex(st) {
  const names = st.gateways.map((g) => g.name).sort();
  const idx = new Map();
  names.forEach((n, i) => idx.set(n, i % LINE.length));
  return idx;
}

function owner(m) {
  if (m.state === "owned") return m.gateway;
  if (m.state === "moving") return m.from + " → " + m.to;
  return "–";
}

function renderHeader(st) {
  $("generation").textContent = st.generation;
  $("mode").textContent = st.mode;
  $("var-norm").textContent = st.var_norm.toFixed(4);
  const alive = st.gateways.filter((g) => g.alive);
  const maxU = alive.reduce((m, g) => Math.max(m, g.utilisation), 0);
  $("max-mean").textContent = alive.length ? maxU.toFixed(2) : "–";
  $("interval").textContent = secs(st.interval_ms) + " × " + st.window;
  $("lease").textContent = secs(st.lease_ms);
  document.body.classList.toggle("pair", st.mode === "pair");
  const badges = [];
  const c = st.controls || {};
  if (c.advise) badges.push(el("span", "ADVISE: nothing enforced", "badge-advise"));
  if (c.paused_since_ms) badges.push(el("span", "PAUSED since " + clock(c.paused_since_ms), "badge-paused"));
  if (c.pins && c.pins.length) badges.push(el("span", c.pins.length + " pinned", "badge-pins"));
  $("badges").replaceChildren(...badges);
  $("updated").textContent = "updated " + clock(Date.now());
}

function renderGateways(st, colours) {
  const maxLoad = st.gateways.reduce((m, g) => Math.max(m, g.load), 0);
  const rows = st.gateways.map((g) => {
    const routes = st.map.filter((m) => (m.state === "owned" ? m.gateway : m.state === "moving" ? m.to : null) === g.name).length;
    const bar = el("div", null, "bar");
    const inner = el("div");
    inner.style.width = (maxLoad > 0 ? (160 * g.load) / maxLoad : 0).toFixed(0) + "px";
    inner.style.background = BAR[colours.get(g.name)];
    bar.appendChild(inner);
    const barCell = el("td");
    barCell.appendChild(bar);
    const name = el("td", g.name);
    name.dataset.gateway = g.name;
    const leaseLeft = g.alive && g.last_report_ms !== null ? Math.max(0, st.lease_ms - g.last_report_ms) : null;
    const conflict = g.conflict ? "boot " + g.conflict.boot_id + " refused ×" + g.conflict.refused : "";
    const state = g.draining ? "draining" : g.alive ? "up" : "DEAD";
    const tr = row([
      name,
      el("td", state, g.alive ? "up" : "dead"),
      num(g.capacity),
      num(mib(g.load)),
      barCell,
      num(g.utilisation.toFixed(2)),
      num(routes),
      num(g.applied),
      num(secs(g.last_report_ms)),
      num(leaseLeft === null ? "–" : secs(leaseLeft)),
      num(g.owned.length),
      num(g.enforce.acquired + " / " + g.enforce.released + " / " + g.enforce.failed),
      el("td", conflict, conflict ? "dead" : ""),
    ]);
    tr.dataset.gateway = g.name;
    tr.dataset.load = String(g.load);
    return tr;
  });
  fill($("gateways").tBodies[0], rows, 13, "no gateway has reported");
}

function renderControls(st) {
  const c = st.controls || { pins: [], cooling: [] };
  const box = $("controls");
  const items = [];
  items.push(el("p", c.advise
    ? "Advise mode: every decision is computed and shown, none is enforced (agents keep what they hold)."
    : "Enforcing: adopted maps are handed to the agents."));
  items.push(el("p", c.paused_since_ms
    ? "Rebalancing paused since " + clock(c.paused_since_ms) + " (sanlb resume); failover and pins still act."
    : "Rebalancing runs every interval (sanlb pause stops it)."));
  items.push(el("p", "Move cool-down: " + secs(c.move_cooldown_ms) + "; routes cooling now: " + c.cooling.length + "."));
  if (c.pins.length) {
    const t = el("table");
    t.appendChild(row([el("th", "pinned target"), el("th", "gateway"), el("th", "since")]));
    for (const p of c.pins) t.appendChild(row([p.target, p.gateway, clock(p.since_ms)]));
    items.push(t);
  } else {
    items.push(el("p", "No pins (sanlb pin TARGET GATEWAY).", "empty"));
  }
  box.replaceChildren(...items);
}

function renderMap(st) {
  const c = st.controls || { pins: [], cooling: [] };
  const pins = new Map(c.pins.map((p) => [p.target, p.gateway]));
  const cooling = new Map(c.cooling.map((x) => [x.target + "|" + (x.host || ""), x.remaining_ms]));
  const rows = st.map.map((m) => {
    const host = el("td", m.host || "", "pair-only");
    const cool = cooling.get(m.target + "|" + (m.host || ""));
    const tr = row([
      m.target, host, owner(m), el("td", m.state, m.state === "moving" ? "moving" : ""),
      num(m.changed), num(mib(m.rate)), pins.get(m.target) || "",
      cool === undefined ? "" : secs(cool),
    ]);
    tr.dataset.target = m.target;
    tr.dataset.owner = owner(m);
    return tr;
  });
  $("map-count").textContent = "(" + st.map.length + " routes)";
  fill($("map").tBodies[0], rows, 8, "no route yet");
  const moving = st.map.filter((m) => m.state === "moving").map((m) => row([m.target, m.from, m.to, num(m.release)]));
  fill($("moves").tBodies[0], moving, 4, "none");
}

function renderDecisions(st) {
  const rows = st.rebalances.slice().reverse().map((r) => {
    const result = r.result || (r.adopted ? "adopted" : "kept");
    const gain = r.cost_before === null ? "–" : (r.cost_before - r.cost_after).toFixed(4);
    const vn = (r.var_norm_before === null ? "–" : r.var_norm_before.toFixed(4)) + " → " + r.var_norm_after.toFixed(4);
    const changes = (r.changes || []).map((c) => c.target + (c.host ? " (" + c.host + ")" : "") + ": " + (c.from || "–") + " → " + c.to).join(", ");
    return row([
      clock(r.at_ms), num(r.generation), r.trigger, el("td", result, "result-" + result), num(gain),
      num(r.moves), num(vn), num(r.duration_ms.toFixed(1) + " ms"), el("td", r.reason, "reason"),
      el("td", changes, "reason"),
    ]);
  });
  fill($("decisions").tBodies[0], rows, 10, "no decision yet");
  const errs = st.report_errors.map(([k, v]) => row([k, num(v)]));
  fill($("errors").tBodies[0], errs, 2, "none");
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// A line per gateway over the history samples; `value` picks what.
function chart(box, hist, colours, value, unit, refLine) {
  const W = 1000, H = 200, L = 60, R = 10, T = 10, B = 24;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  const samples = hist.samples;
  if (samples.length === 0) {
    const t = svg("text", { x: L, y: H / 2 });
    t.textContent = "no interval closed yet";
    root.appendChild(t);
    box.replaceChildren(root);
    return;
  }
  let max = refLine || 0;
  for (const s of samples) for (const g of s.gateways) max = Math.max(max, value(g));
  max = max > 0 ? max * 1.1 : 1;
  const t0 = samples[0].at_ms, t1 = samples[samples.length - 1].at_ms;
  const span = Math.max(1, t1 - t0);
  const x = (t) => L + ((W - L - R) * (t - t0)) / span;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: 4, y: y(v) + 4 });
    label.textContent = v.toFixed(v < 10 ? 2 : 0) + unit;
    root.appendChild(label);
  }
  if (refLine) {
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(refLine), y2: y(refLine), stroke: "#888", "stroke-dasharray": "4 4" }));
  }
  root.appendChild(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  root.appendChild(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  const ago = svg("text", { x: L, y: H - 6 });
  ago.textContent = "−" + Math.round(span / 1000) + " s";
  root.appendChild(ago);
  const now = svg("text", { x: W - R - 30, y: H - 6 });
  now.textContent = "now";
  root.appendChild(now);
  const names = new Set();
  for (const s of samples) for (const g of s.gateways) names.add(g.name);
  for (const name of names) {
    const pts = [];
    for (const s of samples) {
      const g = s.gateways.find((x) => x.name === name);
      if (g) pts.push(x(s.at_ms).toFixed(1) + "," + y(value(g)).toFixed(1));
    }
    const c = LINE[colours.has(name) ? colours.get(name) : 0];
    root.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: c, "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
  }
  box.replaceChildren(root);
}

function renderCharts(st, hist, colours) {
  chart($("chart-load"), hist, colours, (g) => g.load / MIB, "", 0);
  chart($("chart-util"), hist, colours, (g) => g.utilisation, "", 1);
  const legend = st.gateways.map((g) => {
    const s = el("span");
    const i = el("i");
    i.style.background = LINE[colours.get(g.name)];
    s.appendChild(i);
    s.appendChild(document.createTextNode(g.name));
    return s;
  });
  $("legend").replaceChildren(...legend);
}

async function get(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) {
    // The session ended (expired, or the controller restarted).
    window.location.assign("/");
    throw new Error("logged out");
  }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.text();
}

async function refresh() {
  // "freeze" keeps the view as it is, to read it (or photograph it).
  if ($("freeze").checked) return;
  try {
    const [raw, hist] = await Promise.all([get("/v1/status"), get("/v1/history")]);
    const st = JSON.parse(raw);
    const history = JSON.parse(hist);
    const colours = colourIndex(st);
    renderHeader(st);
    renderGateways(st, colours);
    renderControls(st);
    renderMap(st);
    renderDecisions(st);
    renderCharts(st, history, colours);
    $("raw").textContent = JSON.stringify(st, null, 2);
    sanlb.status = st;
    sanlb.raw = raw;
    sanlb.history = history;
    sanlb.renders += 1;
  } catch (e) {
    sanlb.errors += 1;
    $("updated").textContent = "not updated: " + e.message;
  }
}

refresh();
setInterval(refresh, POLL_MS);
