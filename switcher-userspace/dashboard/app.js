// switcher dashboard: renders the daemon's snapshots (server-sent events, ~2 per second and on
// every controller event) and posts the operator's actions with the token.
"use strict";

const WINDOW_S = 300; // seconds of rate history kept per chart
const MIN_RATE_S = 0.4; // shortest interval a rate is computed over
const COLORS = ["blue", "green"];
const STROKE = { blue: "#1f6feb", green: "#1a7f37" };
const HAPPY_PATH = ["deployed", "validating", "ready", "promoted", "stable"];
const BAD_END = { rejected: "rejected", aborted: "aborted", rolled_back: "rolled back" };

const cards = new Map(); // service name -> card state
const stats = { snapshots: 0, lastAtMs: 0 };
window.switcherDashboard = {
  stats,
  chartPoints: (name) => (cards.get(name) ? cards.get(name).t.length : 0),
  // What the packets/s chart shows, for the browser test to compare with the drawing.
  chartData: (name) => {
    const c = cards.get(name);
    return c ? { t: c.t, blue: c.pps.blue, green: c.pps.green } : null;
  },
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "–";
}

function fmtRate(v, unit) {
  if (v == null || !isFinite(v)) return "–";
  const k = [["G", 1e9], ["M", 1e6], ["k", 1e3]].find(([, d]) => Math.abs(v) >= d);
  return k ? `${(v / k[1]).toFixed(1)} ${k[0]}${unit}` : `${v.toFixed(0)} ${unit}`;
}

// A count without unit, compact: 950, 1.2k, 3.4M.
function fmtCount(v) {
  if (v == null || !isFinite(v)) return "–";
  const k = [["G", 1e9], ["M", 1e6], ["k", 1e3]].find(([, d]) => Math.abs(v) >= d);
  return k ? `${(v / k[1]).toFixed(1)}${k[0]}` : v.toFixed(0);
}

// A share (0..1) as a percentage: 100%, 50%, 33.3%.
function fmtShare(v) {
  return `${Math.round(v * 1000) / 10}%`;
}

// A deployment's pool in one line, as the CLI writes it: ADDR:PORT[*WEIGHT], ...
function describePool(d) {
  if (!d.members) return d.backend || "–";
  return d.members.map((m) => (typeof m === "string" ? m : `${m.addr}${m.weight && m.weight !== 1 ? `*${m.weight}` : ""}`)).join(", ");
}

function notice(text, ok) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = ok ? "ok" : "err";
}

// ---- actions -------------------------------------------------------------------------------

const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("switcher-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("switcher-token", tokenInput.value.trim()));
document.getElementById("token-form").addEventListener("submit", (e) => e.preventDefault());

async function act(service, action, body) {
  const token = tokenInput.value.trim();
  try {
    const r = await fetch(`/api/services/${encodeURIComponent(service)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body || {}),
    });
    const v = await r.json();
    if (v.ok) notice(`${service}: ${action} done`, true);
    else notice(`${service}: ${action} refused (${r.status}): ${v.error}`, false);
  } catch (e) {
    notice(`${service}: ${action} failed: ${e}`, false);
  }
}

// ---- one card per service ------------------------------------------------------------------

function chart(parent, title, unit) {
  const box = el("div", { class: "chart" });
  parent.append(el("div", { class: "chart-title", text: title }), box);
  const plot = new TimeChart(box, {
    height: 130,
    series: COLORS.map((c) => ({ label: c, color: STROKE[c] })),
    formatY: (v) => fmtRate(v, unit),
  });
  return { box, plot };
}

function colorBox(color) {
  const dl = el("dl");
  const fields = {};
  for (const [key, label] of [
    ["backend", "backend"], ["version", "version"], ["health", "health"],
    ["pps", "packets/s"], ["bps", "bytes/s"], ["pinned", "pinned flows"], ["packets", "packets"],
  ]) {
    fields[key] = el("dd", { "data-testid": `${color}-${key}` });
    dl.append(el("dt", { text: label }), fields[key]);
  }
  // The pool, member by member. Its height is fixed (a few rows, then it scrolls) so that a
  // pool that grows or shrinks never moves the buttons below.
  const count = el("span");
  const head = el("div", { class: "member head" }, count, el("span", { text: "share" }),
    el("span", { text: "pkt/s" }), el("span", { text: "pinned" }));
  const list = el("ol", { class: "members", "data-testid": `${color}-members` });
  const state = el("span", { class: "muted" });
  const box = el("div", { class: `color ${color}` }, el("h3", {}, el("span", { text: color }), state), dl,
    el("div", { class: "pool" }, head, list));
  return { box, fields, state, count, list, rows: new Map(), memberKey: null };
}

function memberRow(m) {
  const dot = el("span", { class: "dot" });
  const addr = el("span", { class: "addr", text: m.addr });
  const weight = el("span", { class: "weight" });
  const tag = el("span", { class: "tag", text: "out" });
  const fill = el("span", { class: "fill" });
  const pct = el("span", { class: "pct" });
  const pps = el("span", { class: "pps" });
  const pinned = el("span", { class: "pinned" });
  const li = el("li", { class: "member", "data-member": m.addr },
    el("span", { class: "who" }, dot, addr, weight, tag),
    el("span", { class: "share" }, el("span", { class: "bar" }, fill), pct), pps, pinned);
  return { li, dot, weight, fill, pct, pps, pinned };
}

// Each member: health dot, share of the colour's new flows, packets/s, open connections. A
// member its probes took out of the table is marked "out" (its share is then 0, unless every
// member is out: then all keep theirs).
function renderMembers(box, members, rates, serving) {
  const key = members.map((m) => m.addr).join(" ");
  if (key !== box.memberKey) {
    box.memberKey = key;
    box.rows = new Map();
    box.list.replaceChildren(...members.map((m) => {
      const r = memberRow(m);
      box.rows.set(m.addr, r);
      return r.li;
    }));
  }
  let out = 0;
  for (const m of members) {
    const r = box.rows.get(m.addr);
    const h = m.health;
    const isOut = !!h && h.in_service === false;
    if (isOut) out += 1;
    r.li.classList.toggle("out", isOut);
    r.dot.className = `dot ${h ? (h.up ? "up" : "down") : ""}`;
    r.weight.textContent = m.weight !== 1 ? `×${m.weight}` : "";
    r.fill.style.width = `${Math.min(100, Math.max(0, m.share * 100))}%`;
    r.pct.textContent = fmtShare(m.share);
    const rate = rates ? rates.get(m.addr) : undefined;
    r.pps.textContent = rate == null ? "–" : fmtCount(rate);
    r.pinned.textContent = String(m.pinned);
    r.pinned.classList.toggle("draining", !serving && m.pinned > 0);
    const health = !h ? "not probed"
      : `${isOut ? "out of service" : "in service"}, ${h.up ? `up, ${(h.latency_seconds * 1000).toFixed(2)} ms` : `down: ${h.error || ""}`}`;
    r.li.title = `${m.addr}${m.weight !== 1 ? ` weight ${m.weight}` : ""}: ${health}`;
  }
  box.count.textContent = `${members.length} member${members.length === 1 ? "" : "s"}` +
    (out ? `, ${out} out` : "");
}

function makeCard(svc) {
  const root = el("section", { class: "svc", "data-service": svc.name });
  const active = el("span", { class: "badge", "data-testid": `active-${svc.name}` });
  const phase = el("span", { class: "badge phase", "data-testid": `phase-${svc.name}` });
  const gen = el("span", { class: "gen" });
  root.append(el("h2", {}, el("span", { text: svc.name }),
    el("span", { class: "addr", text: `${svc.vip}:${svc.port}/${svc.protocol}` }), active, phase, gen));
  const colors = el("div", { class: "colors" });
  const boxes = {};
  for (const c of COLORS) {
    boxes[c] = colorBox(c);
    colors.append(boxes[c].box);
  }
  root.append(colors);
  const actions = el("div", { class: "actions" });
  const promote = el("button", { type: "button", text: "Promote", "data-action": "promote" });
  const flip = el("button", { type: "button", "data-action": "flip" });
  const rollback = el("button", { type: "button", class: "rollback", text: "Rollback", "data-action": "rollback" });
  actions.append(promote, flip, rollback);
  root.append(actions);
  const charts = el("div");
  root.append(charts);
  const timelineTitle = el("h4", { text: "Deployment" });
  const timeline = el("ol", { class: "timeline", "data-testid": `timeline-${svc.name}` });
  const steps = el("ul", { class: "steps" });
  const historyTitle = el("h4", { text: "History" });
  const history = el("table", { class: "history", "data-testid": `history-${svc.name}` });
  root.append(timelineTitle, timeline, steps, historyTitle, history);
  document.getElementById("services").append(root);

  const card = {
    root, active, phase, gen, boxes, flip, timeline, steps, history,
    t: [], pps: { blue: [], green: [] }, bps: { blue: [], green: [] }, prev: null,
    lastDeployment: "", lastHistory: "",
  };
  card.pkts = chart(charts, "packets/s per colour", "pkt/s");
  card.bytes = chart(charts, "bytes/s per colour", "B/s");
  promote.addEventListener("click", () => act(svc.name, "promote"));
  rollback.addEventListener("click", () => act(svc.name, "rollback"));
  flip.addEventListener("click", () => act(svc.name, "flip", { to: flip.dataset.to }));
  cards.set(svc.name, card);
  return card;
}

function phaseClass(p) {
  if (!p) return "";
  if (p in BAD_END) return "bad";
  if (p === "stable" || p === "ready") return "good";
  return "busy";
}

function renderDeployment(card, d) {
  const key = d ? JSON.stringify([d.id, d.phase, d.transitions.length]) : "";
  if (key === card.lastDeployment) return;
  card.lastDeployment = key;
  card.timeline.replaceChildren();
  card.steps.replaceChildren();
  if (!d) {
    card.timeline.append(el("li", { text: "no deployment in progress" }));
    return;
  }
  const reached = new Set(d.transitions.map((t) => t.to));
  const path = d.phase in BAD_END ? [...HAPPY_PATH.filter((p) => reached.has(p)), d.phase] : HAPPY_PATH;
  for (const p of path) {
    const cls = p === d.phase ? `current ${phaseClass(p)}` : reached.has(p) ? "done" : "";
    card.timeline.append(el("li", { class: cls, text: BAD_END[p] || p }));
  }
  card.steps.append(el("li", { text: `deployment ${d.id}: ${d.color} ${describePool(d)}${d.version ? " " + d.version : ""}` }));
  for (const t of d.transitions) {
    const li = el("li", { text: `${fmtTime(t.at_ms)} ${t.from || "–"} → ${t.to} by ${t.actor}: ${t.reason}` });
    if (t.evidence) {
      li.append(el("details", {}, el("summary", { text: "evidence" }),
        el("pre", { text: JSON.stringify(t.evidence, null, 2) })));
    }
    card.steps.append(li);
  }
}

function renderHistory(card, recent) {
  const key = JSON.stringify(recent.map((d) => [d.id, d.phase]));
  if (key === card.lastHistory) return;
  card.lastHistory = key;
  card.history.replaceChildren(el("tr", {}, ...["id", "colour", "backend", "version", "outcome", "at"].map((h) => el("th", { text: h }))));
  for (const d of [...recent].reverse()) {
    const last = d.transitions[d.transitions.length - 1];
    card.history.append(el("tr", {},
      el("td", { text: String(d.id) }), el("td", { text: d.color }), el("td", { text: describePool(d) }),
      el("td", { text: d.version || "–" }), el("td", { text: BAD_END[d.phase] || d.phase }),
      el("td", { text: fmtTime(last ? last.at_ms : 0) })));
  }
}

function renderService(svc, atMs) {
  const card = cards.get(svc.name) || makeCard(svc);
  const other = svc.active === "blue" ? "green" : "blue";
  card.root.className = `svc active-${svc.active}`;
  card.active.className = `badge ${svc.active}`;
  card.active.textContent = svc.active;
  const phase = svc.deployment ? svc.deployment.phase : null;
  card.phase.textContent = phase ? (BAD_END[phase] || phase) : "idle";
  card.phase.className = `badge phase ${phaseClass(phase)}`;
  const cut = svc.last_flip && svc.last_flip.cutover_us != null ? `, cutover ${svc.last_flip.cutover_us} µs` : "";
  card.gen.textContent = `generation ${svc.generation}` +
    (svc.last_flip ? `, flipped ${fmtTime(svc.last_flip.at_ms)}${cut}` : "");
  card.flip.textContent = `Flip to ${other}`;
  card.flip.dataset.to = other;
  card.flip.className = `flip-${other}`;

  // Rates over at least MIN_RATE_S: event-driven snapshots can be milliseconds apart.
  const t = atMs / 1000;
  const dt = card.prev ? t - card.prev.t : 0;
  const rates = {};
  const memberRates = {};
  for (const c of COLORS) {
    const now = svc.colors[c];
    const before = card.prev && card.prev.colors[c];
    rates[c] = dt >= MIN_RATE_S && before
      ? { pps: Math.max(0, (now.packets - before.packets) / dt), bps: Math.max(0, (now.bytes - before.bytes) / dt) }
      : card.rates && card.rates[c];
    if (dt >= MIN_RATE_S && before) {
      memberRates[c] = new Map();
      for (const m of now.members || []) {
        const b = (before.members || []).find((x) => x.addr === m.addr);
        if (b) memberRates[c].set(m.addr, Math.max(0, (m.packets - b.packets) / dt));
      }
    } else {
      memberRates[c] = card.memberRates && card.memberRates[c];
    }
  }
  card.memberRates = memberRates;
  if (!card.prev || dt >= MIN_RATE_S) {
    card.prev = { t, colors: { blue: svc.colors.blue, green: svc.colors.green } };
  }
  card.rates = rates;
  if (dt >= MIN_RATE_S && rates.blue && rates.green) {
    card.t.push(t);
    for (const c of COLORS) {
      card.pps[c].push(rates[c].pps);
      card.bps[c].push(rates[c].bps);
    }
    while (card.t.length && card.t[0] < t - WINDOW_S) {
      card.t.shift();
      for (const c of COLORS) { card.pps[c].shift(); card.bps[c].shift(); }
    }
    card.pkts.plot.setData(card.t, [card.pps.blue, card.pps.green]);
    card.bytes.plot.setData(card.t, [card.bps.blue, card.bps.green]);
    card.pkts.box.dataset.points = String(card.t.length);
  }

  for (const c of COLORS) {
    const v = svc.colors[c];
    const f = card.boxes[c].fields;
    const serving = svc.active === c;
    card.boxes[c].box.classList.toggle("serving", serving);
    card.boxes[c].state.textContent = serving ? "serving new flows" : (v.pinned > 0 ? "draining" : "idle");
    f.backend.textContent = v.backend || "–";
    f.version.textContent = `${v.version || "–"}${v.validated ? " ✓ validated" : ""}`;
    f.health.replaceChildren();
    if (v.health) {
      f.health.append(el("span", { class: `dot ${v.health.up ? "up" : "down"}` }),
        v.health.up ? `up, ${(v.health.latency_seconds * 1000).toFixed(2)} ms` : `down: ${v.health.error || ""}`);
    } else {
      f.health.textContent = "not probed";
    }
    f.pps.textContent = rates[c] ? fmtRate(rates[c].pps, "pkt/s") : "–";
    f.bps.textContent = rates[c] ? fmtRate(rates[c].bps, "B/s") : "–";
    f.pinned.textContent = String(v.pinned);
    f.pinned.className = !serving && v.pinned > 0 ? "draining" : "";
    f.packets.textContent = v.packets.toLocaleString();
    renderMembers(card.boxes[c], v.members || [], memberRates[c], serving);
  }
  renderDeployment(card, svc.deployment);
  renderHistory(card, svc.recent || []);
}

function renderEvents(events) {
  const ol = document.getElementById("events");
  ol.replaceChildren(...[...events].reverse().map((e) =>
    el("li", {}, el("span", { class: "muted", text: `${fmtTime(e.at_ms)} ` }),
      el("span", { class: `k-${e.kind}`, text: `[${e.kind}] ` }), `${e.message} (${e.actor})`)));
}

function render(doc) {
  stats.snapshots += 1;
  stats.lastAtMs = doc.at_ms;
  for (const svc of doc.services) renderService(svc, doc.at_ms);
  // A service removed by a reload leaves the page.
  const live = new Set(doc.services.map((s) => s.name));
  for (const [name, card] of cards) {
    if (!live.has(name)) {
      card.root.remove();
      cards.delete(name);
    }
  }
  renderEvents(doc.events || []);
  document.getElementById("updated").textContent = `updated ${fmtTime(doc.at_ms)} · v${doc.version}`;
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/events");
  es.addEventListener("open", () => { conn.textContent = "live"; conn.className = "conn up"; });
  es.addEventListener("error", () => { conn.textContent = "reconnecting…"; conn.className = "conn down"; });
  es.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
}

// ---- fleet (fleet mode only: a single host's /api/fleet says enabled: false) ---------------

const FLEET_EVERY_MS = 1000;

function renderFleet(f) {
  document.getElementById("fleet-section").hidden = false;
  const names = Object.keys(f.desired).sort();
  const summary = document.getElementById("fleet-summary");
  summary.textContent = `${f.cluster} · asked ${f.host}${f.connected ? "" : " (DISCONNECTED: last known state)"} · ${f.in_drift} in drift`;
  summary.className = f.connected && f.in_drift === 0 ? "muted" : "bad";
  const head = el("tr", {}, el("th", { text: "host" }), el("th", { text: "etcd" }),
    ...names.map((n) => el("th", { text: `${n} (desired ${f.desired[n].active}, rev ${f.desired[n].revision})` })),
    el("th", { text: "drift" }));
  const rows = f.hosts.map((h) => el("tr", { "data-testid": `fleet-host-${h.host}`, class: h.drift.length ? "drift" : "" },
    el("td", { text: h.host }),
    el("td", { "data-testid": `fleet-conn-${h.host}`, text: h.connected ? "connected" : "disconnected" }),
    ...names.map((n) => {
      const s = h.services[n];
      return el("td", { "data-testid": `fleet-${h.host}-${n}`, class: s ? s.active : "" },
        s ? `${s.active} · gen ${s.generation} · rev ${s.applied_revision}${s.lag ? ` (lag ${s.lag})` : ""}${s.config_matches ? "" : " · config differs"}` : "–");
    }),
    el("td", { "data-testid": `fleet-drift-${h.host}`, text: h.drift.length ? h.drift.join("; ") : "in sync" })));
  document.getElementById("fleet").replaceChildren(head, ...rows);
}

async function pollFleet() {
  try {
    const r = await fetch("/api/fleet");
    if (r.ok) {
      const f = await r.json();
      if (f.enabled === false) return; // single host: no fleet view
      renderFleet(f);
    }
  } catch (_) {
    // The daemon restarts or the network blinks: the next poll tells.
  }
  setTimeout(pollFleet, FLEET_EVERY_MS);
}

connect();
pollFleet();
