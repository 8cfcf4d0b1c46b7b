// rtrl dashboard: reads /api/state once, then follows /api/events (Server-Sent Events) and draws
// everything on <canvas> by hand. No framework and nothing fetched from elsewhere.
"use strict";

const PALETTE = ["#2563eb", "#db2777", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#4b5563",
                 "#dc2626", "#65a30d", "#7c3aed", "#0d9488"];
const FRESH = "#16a34a", FALLBACK = "#ea580c";
// The actions chart of a gateway covers this many shown frames (6 s at 15 shown frames a second).
const ACTION_WINDOW_FRAMES = 90;

const view = { settings: null, state: null, history: [], gateways: [], lastEventMs: 0, frames: 0 };

// ---- formatting ---------------------------------------------------------------------------------

function fmt(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}
function fmtInt(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US");
}
function fmtCompact(value) {
  const v = Math.abs(value);
  if (v >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (v >= 1e4) return (value / 1e3).toFixed(0) + "k";
  if (v >= 1e3) return (value / 1e3).toFixed(1) + "k";
  if (v >= 100 || Number.isInteger(value)) return value.toFixed(0);
  if (v >= 10) return value.toFixed(1);
  return value.toFixed(2);
}
function pct(value, digits = 2) {
  return value === null || value === undefined ? "–" : (100 * value).toFixed(digits) + "%";
}
function colorOf(index) { return PALETTE[index % PALETTE.length]; }
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// ---- facts (tiles) ------------------------------------------------------------------------------

// Sets a <dl> to [id, label, value, small, extra attributes] rows, reusing nodes so ids stay stable.
function setFacts(dl, rows) {
  for (const [id, label, value, small, attrs] of rows) {
    let dd = dl.querySelector(`dd[data-key="${id}"]`);
    if (!dd) {
      const box = el("div");
      box.append(el("dt", {}, label));
      dd = el("dd", { "data-key": id });
      if (id) dd.id = id;
      box.append(dd);
      dl.append(box);
    }
    dd.textContent = value;
    if (small) dd.append(" ", el("small", {}, small));
    for (const [key, v] of Object.entries(attrs || {})) dd.setAttribute(key, v);
  }
}

// ---- charts -------------------------------------------------------------------------------------

// Charts scrolled out of view are not redrawn (drawing costs CPU on the machine showing the page,
// which may be the one running the game); they are redrawn as soon as they scroll back in.
const visible = new Set();
const visibility = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (entry.isIntersecting) visible.add(entry.target); else visible.delete(entry.target);
  }
  if (entries.some((entry) => entry.isIntersecting)) drawCharts();
});
function shown(canvas) {
  if (!canvas.dataset.observed) { canvas.dataset.observed = "1"; visibility.observe(canvas); return false; }
  return visible.has(canvas);
}

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, width, height };
}

// A round tick step (1, 2 or 5 times a power of ten) giving at most 5 intervals up to `value`.
function niceStep(value) {
  const raw = value / 5;
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const step of [1, 2, 5, 10]) if (step * power >= raw) return step * power;
  return 10 * power;
}
function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = niceStep(value);
  return Math.ceil(value / step - 1e-9) * step;
}

function drawAxes(ctx, box, yMin, yMax, yFormat, xLabels) {
  ctx.strokeStyle = "#e3e6eb"; ctx.fillStyle = "#6b7280"; ctx.lineWidth = 1;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  const step = niceStep(yMax - yMin), ticks = Math.min(10, Math.max(1, Math.round((yMax - yMin) / step)));
  for (let i = 0; i <= ticks; i++) {
    const value = yMin + (yMax - yMin) * i / ticks;
    const y = box.bottom - (box.bottom - box.top) * i / ticks;
    ctx.beginPath(); ctx.moveTo(box.left, Math.round(y) + 0.5); ctx.lineTo(box.right, Math.round(y) + 0.5); ctx.stroke();
    ctx.fillText(yFormat(value), box.left - 6, y);
  }
  ctx.textBaseline = "top";
  for (const [x, text, align] of xLabels) { ctx.textAlign = align || "center"; ctx.fillText(text, x, box.bottom + 5); }
}

function drawLegend(ctx, series, box) {
  let x = box.left;
  ctx.textAlign = "left"; ctx.textBaseline = "middle";
  for (const s of series) {
    if (!s.name) continue;
    ctx.fillStyle = s.color;
    if (s.dash) { ctx.fillRect(x, 6, 5, 2); ctx.fillRect(x + 7, 6, 5, 2); } else ctx.fillRect(x, 4, 12, 5);
    ctx.fillStyle = "#374151";
    ctx.fillText(s.name, x + 16, 7);
    x += ctx.measureText(s.name).width + 30;
  }
}

// series: [{name, color, dash, points: [[x, y], ...]}]; x is Unix seconds (time) or a number.
function lineChart(canvas, series, options) {
  if (!shown(canvas)) return;
  const { ctx, width, height } = prepare(canvas);
  const box = { left: 46, right: width - 10, top: 18, bottom: height - 20 };
  const all = series.flatMap((s) => s.points).filter((p) => p[1] !== null && p[1] !== undefined);
  let xMin = options.xMin, xMax = options.xMax;
  if (xMin === undefined) xMin = all.length ? Math.min(...all.map((p) => p[0])) : 0;
  if (xMax === undefined) xMax = all.length ? Math.max(...all.map((p) => p[0])) : 1;
  if (xMax <= xMin) xMax = xMin + 1;
  const ys = all.map((p) => p[1]);
  let yMin = options.yMin !== undefined ? options.yMin : Math.min(0, ...ys);
  let yMax = options.yMax !== undefined ? options.yMax : Math.max(0, ...ys);
  if (yMax <= yMin) yMax = yMin + 1;
  // Round free ends to the tick step, so ticks land on round numbers.
  const step = niceStep(yMax - yMin);
  if (options.yMin === undefined) yMin = Math.floor(yMin / step + 1e-9) * step;
  if (options.yMax === undefined) yMax = Math.ceil(yMax / step - 1e-9) * step;
  const sx = (x) => box.left + (box.right - box.left) * (x - xMin) / (xMax - xMin);
  const sy = (y) => box.bottom - (box.bottom - box.top) * (y - yMin) / (yMax - yMin);
  drawAxes(ctx, box, yMin, yMax, options.yFormat || fmtCompact, options.xLabels ? options.xLabels(sx, xMin, xMax) : []);
  ctx.save();
  ctx.beginPath(); ctx.rect(box.left, box.top - 2, box.right - box.left, box.bottom - box.top + 4); ctx.clip();
  for (const s of series) {
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 1.8;
    ctx.setLineDash(s.dash ? [5, 4] : []);
    ctx.beginPath();
    let open = false;
    for (const [x, y] of s.points) {
      if (y === null || y === undefined) { open = false; continue; }
      if (open) ctx.lineTo(sx(x), sy(y)); else ctx.moveTo(sx(x), sy(y));
      open = true;
    }
    ctx.stroke();
    if (s.dots) for (const [x, y] of s.points) { ctx.beginPath(); ctx.arc(sx(x), sy(y), 2.2, 0, 2 * Math.PI); ctx.fill(); }
  }
  ctx.restore();
  ctx.setLineDash([]);
  drawLegend(ctx, series, box);
  if (!all.length) {
    ctx.fillStyle = "#9ca3af"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText(options.empty || "no data yet", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
  }
}

// groups: [{label, sublabel}], series: [{name, color, values: [per group]}]
function barChart(canvas, groups, series, options) {
  if (!shown(canvas)) return;
  const { ctx, width, height } = prepare(canvas);
  const box = { left: 46, right: width - 10, top: 18, bottom: height - (options.twoLineLabels ? 32 : 20) };
  const stacked = Boolean(options.stacked);
  const values = stacked
    ? groups.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0))
    : series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const yMax = niceMax(Math.max(0, ...values));
  const slot = (box.right - box.left) / Math.max(groups.length, 1);
  const barWidth = stacked ? Math.min(36, slot * 0.6) : Math.min(28, (slot * 0.8) / Math.max(series.length, 1));
  // A label wider than its slot is cut (with many replicas, ids stay readable in the table below).
  const fit = (text) => {
    if (ctx.measureText(text).width <= slot - 4) return text;
    while (text.length > 1 && ctx.measureText(text + "…").width > slot - 4) text = text.slice(0, -1);
    return text + "…";
  };
  const xLabels = groups.map((g, i) => [box.left + slot * (i + 0.5), fit(g.label)]);
  drawAxes(ctx, box, 0, yMax, options.yFormat || fmtCompact, xLabels);
  groups.forEach((g, i) => {
    const center = box.left + slot * (i + 0.5);
    let base = box.bottom;
    series.forEach((s, j) => {
      const value = s.values[i];
      if (value === null || value === undefined) return;
      const h = (box.bottom - box.top) * value / yMax;
      ctx.fillStyle = s.color;
      if (stacked) {
        ctx.fillRect(center - barWidth / 2, base - h, barWidth, h);
        base -= h;
      } else {
        const x = center - (barWidth * series.length) / 2 + j * barWidth;
        ctx.fillRect(x + 1, box.bottom - h, barWidth - 2, h);
      }
    });
    if (g.sublabel) {
      ctx.fillStyle = "#1d2330"; ctx.textAlign = "center"; ctx.textBaseline = "top";
      ctx.fillText(g.sublabel, center, box.bottom + 18);
    }
  });
  drawLegend(ctx, series, box);
  if (!groups.length) {
    ctx.fillStyle = "#9ca3af"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.fillText(options.empty || "no data yet", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
  }
}

function timeLabels(sx, xMin, xMax) {
  const span = xMax - xMin, labels = [];
  const step = span > 240 ? 60 : span > 100 ? 30 : span > 40 ? 10 : 5;
  for (let back = 0; back <= span; back += step) {
    const x = sx(xMax - back);
    labels.push([x, back === 0 ? "now" : `-${back}s`, back === 0 ? "right" : "center"]);
  }
  return labels;
}

// ---- gateways -----------------------------------------------------------------------------------

function gatewayCard(index) {
  while (view.gateways.length <= index) {
    const i = view.gateways.length;
    const node = document.getElementById("gateway-template").content.firstElementChild.cloneNode(true);
    node.id = `gw-${i}`;
    node.querySelector("canvas.frame").id = `gw-${i}-canvas`;
    node.querySelector(".action-name").id = `gw-${i}-action`;
    node.querySelector(".action-kind").id = `gw-${i}-action-kind`;
    document.getElementById("gateways").append(node);
    node.querySelector("canvas.actions").id = `gw-${i}-actions`;
    view.gateways.push({ node, recent: [] });
  }
  return view.gateways[index];
}

function showGateway(index, gateway, feed) {
  const card = gatewayCard(index);
  const node = card.node;
  const spec = gateway.spec || {};
  node.querySelector(".gateway-id").textContent = (gateway.stats && gateway.stats.gateway_id) || spec.gateway_id || "gateway";
  node.querySelector(".gateway-address").textContent = `${gateway.address} · ${spec.env_id || "?"}`;
  const errors = [gateway.error && `GetStats: ${gateway.error}`, feed && feed.error && `frames: ${feed.error}`].filter(Boolean);
  node.querySelector(".error").textContent = errors.join(" · ");
  const s = gateway.stats;
  if (!s) return;
  const dl = node.querySelector("dl");
  setFacts(dl, [
    [`gw-${index}-coverage`, "coverage", pct(s.coverage), `of ${fmtInt(s.decisions)}`,
      { "data-coverage": String(s.coverage), "data-decisions": String(s.decisions), "data-fresh": String(s.decisions_fresh) }],
    [`gw-${index}-coverage-recent`, "coverage 2 s", pct(s.coverage_recent, 1)],
    [`gw-${index}-fps`, "frame rate", fmt(s.measured_frame_rate_hz), `fps · late ${fmtInt(s.frames_late)}`],
    [`gw-${index}-staleness`, "staleness p50/p99", `${fmt(s.staleness_frames.p50, 0)} / ${fmt(s.staleness_frames.p99, 0)}`, "frames"],
    [`gw-${index}-overhead`, "overhead p50/p99", `${fmt(s.decision_overhead_ms.p50)} / ${fmt(s.decision_overhead_ms.p99)}`, "ms"],
    [`gw-${index}-fallback`, "fallback steps", fmtInt(s.decisions_fallback), `late replies ${fmtInt(s.replies_late)}`],
    [`gw-${index}-episodes`, "episodes", fmtInt(s.episodes), s.episodes ? `last ${fmt(s.last_episode_return, 0)} · mean ${fmt(s.mean_episode_return)}` : ""],
    [`gw-${index}-replicas`, "replicas", fmtInt(s.replica_count), `${s.scheduler} · L ${s.lead_frames}`],
    [`gw-${index}-transitions`, "transitions", fmtInt(s.transitions_published), `dropped ${fmtInt(s.transitions_dropped)}`],
  ]);
  showProfile(index, node, s);
}

// A number read from a game as it is (an integer stays one), at most 6 significant digits.
function fmtValue(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(6)));
}
function fmtSigned(value) { return (value > 0 ? "+" : "") + fmtValue(value); }

// A profile game's variables and reward terms from GetStats, one row each (rebuilt per poll: a few rows);
// hidden for a game without a profile's rules.
function showProfile(index, node, s) {
  const box = node.querySelector(".profile");
  const variables = s.variables || [], terms = s.reward_terms || [];
  box.hidden = !variables.length && !terms.length;
  if (box.hidden) return;
  const table = box.querySelector("table");
  table.id = `gw-${index}-profile`;
  const cell = (text, value) => el("td", value === undefined ? {} : { "data-value": String(value) }, text);
  const rows = variables.map((v) => {
    const tr = el("tr", { "data-variable": v.name });
    tr.append(cell("variable"), cell(v.name), cell(v.value === null ? "?" : fmtValue(v.value), v.value === null ? "" : v.value), cell(""));
    if (v.value === null) tr.className = "unknown";
    return tr;
  });
  for (const t of terms) {
    const tr = el("tr", { "data-term": t.label });
    tr.append(cell("reward"), cell(t.label), cell(fmtSigned(t.last_frame_reward), t.last_frame_reward),
      cell(fmtSigned(t.episode_reward), t.episode_reward));
    rows.push(tr);
  }
  if (terms.length > 1) {
    const sum = (key) => terms.reduce((total, t) => total + t[key], 0);
    const tr = el("tr", { "data-term": "sum", class: "sum" });
    tr.append(cell(""), cell("sum"), cell(fmtSigned(sum("last_frame_reward")), sum("last_frame_reward")),
      cell(fmtSigned(sum("episode_reward")), sum("episode_reward")));
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
  const end = box.querySelector(".episode-end");
  end.id = `gw-${index}-episode-end`;
  const rules = s.last_episode_end_rules || [];
  end.textContent = rules.length ? `last episode ended by ${rules.join(", ")}` : "no episode ended by a rule yet";
}

function showFrame(frame) {
  const card = gatewayCard(frame.gateway);
  const node = card.node;
  const image = new Image();
  image.onload = () => {
    const canvas = node.querySelector("canvas.frame");
    if (canvas.width !== image.width || canvas.height !== image.height) {
      canvas.width = image.width; canvas.height = image.height;
      canvas.style.height = `${Math.round(240 * image.height / image.width)}px`;
    }
    canvas.getContext("2d").drawImage(image, 0, 0);
    canvas.dataset.frameIndex = String(frame.frame_index);
  };
  image.src = "data:image/png;base64," + frame.png_base64;
  node.querySelector(".action-name").textContent = frame.action_name;
  const kind = node.querySelector(".action-kind");
  kind.textContent = frame.fresh ? "fresh" : "fallback";
  kind.className = "action-kind " + (frame.fresh ? "fresh" : "fallback");
  const strip = node.querySelector("canvas.strip");
  const ctx = strip.getContext("2d");
  const cell = strip.width / 90;
  ctx.clearRect(0, 0, strip.width, strip.height);
  [...frame.fresh_strip].forEach((bit, i) => {
    ctx.fillStyle = bit === "1" ? FRESH : FALLBACK;
    ctx.fillRect(strip.width - (frame.fresh_strip.length - i) * cell, 0, Math.ceil(cell), strip.height);
  });
  card.recent.push([frame.action, frame.fresh]);
  if (card.recent.length > ACTION_WINDOW_FRAMES) card.recent.shift();
  const meanings = (view.state && view.state.gateways[frame.gateway] && view.state.gateways[frame.gateway].spec)
    ? view.state.gateways[frame.gateway].spec.action_meanings : [];
  const count = Math.max(meanings.length, ...card.recent.map((r) => r[0] + 1));
  const groups = Array.from({ length: count }, (_, a) => ({ label: meanings[a] || String(a) }));
  const share = (fresh) => groups.map((_, a) => 100 * card.recent.filter((r) => r[0] === a && r[1] === fresh).length / card.recent.length);
  if (Date.now() - card.actionsDrawnMs > 150 || !card.actionsDrawnMs) {
    card.actionsDrawnMs = Date.now();
    barChart(node.querySelector("canvas.actions"), groups, [
      { name: "fresh", color: FRESH, values: share(true) },
      { name: "fallback", color: FALLBACK, values: share(false) },
    ], { yFormat: (v) => v.toFixed(0) + "%", stacked: true });
  }
  node.querySelector(".frame-info").textContent =
    `frame ${fmtInt(frame.frame_index)} · episode ${frame.episode} · skipped ${fmtInt(frame.frames_skipped)}`;
  view.frames += 1;
}

// ---- replicas and learner -----------------------------------------------------------------------

function replicaRows(state) {
  // Gateway-side numbers (latency, version of the last reply) per address, from every gateway.
  const seen = {};
  for (const g of state.gateways) for (const r of (g.stats ? g.stats.replicas : [])) {
    const previous = seen[r.address];
    if (!previous || r.requests > previous.requests) seen[r.address] = r;
  }
  const addresses = new Set([...Object.keys(seen), ...state.replicas.map((r) => r.address)]);
  const own = Object.fromEntries(state.replicas.map((r) => [r.address, r]));
  return [...addresses].sort().map((address) => ({ address, gw: seen[address], own: own[address] }));
}

function showReplicas(state) {
  const body = document.querySelector("#replicas tbody");
  const rows = replicaRows(state);
  const key = JSON.stringify(rows);
  if (body.dataset.key === key) return rows;
  body.dataset.key = key;
  body.replaceChildren(...rows.map((row, i) => {
    const tr = el("tr", { "data-replica": row.address });
    const status = row.own && row.own.status;
    const gw = row.gw;
    const name = el("td");
    name.append(el("span", { class: "swatch", style: `background:${colorOf(i)}` }), row.address);
    let state = "ok", css = "state-ok";
    if (gw && gw.excluded) { state = "excluded"; css = "state-bad"; }
    else if (gw && gw.warming_up) state = "warming up";
    else if (row.own && row.own.error) { state = row.own.error.split(":")[0].toLowerCase(); css = "state-bad"; }
    else if (row.own && !row.own.in_registry && !row.own.called_by_gateway) state = "static";
    const cells = [
      name,
      el("td", {}, status ? status.replica_id : "–"),
      el("td", { class: "served-version" }, status ? String(status.checkpoint_version) : "–"),
      el("td", { class: "gateway-version", "data-version": gw ? String(gw.checkpoint_version) : "" }, gw ? String(gw.checkpoint_version) : "–"),
      el("td", {}, gw && gw.latency_ms.count ? `${fmt(gw.latency_ms.p50)} / ${fmt(gw.latency_ms.p99)} ms` : "–"),
      el("td", {}, status && status.inference_ms.count ? `${fmt(status.inference_ms.p50)} ms` : "–"),
      el("td", {}, status ? fmt(status.requests_per_second) : "–"),
      el("td", {}, gw ? String(gw.in_flight) : "–"),
      el("td", { class: "open-streams", "data-open": status ? String(status.open_streams) : "" },
        (status ? `${status.open_streams}/${status.max_open_streams}` : "–") + (gw && gw.transport ? ` · ${gw.transport}` : "")),
      el("td", {}, gw ? fmtInt(gw.failures) : "–"),
      el("td", { class: css }, state),
    ];
    tr.append(...cells);
    return tr;
  }));
  return rows;
}

function showLearner(learner) {
  document.getElementById("learner-address").textContent = learner.address || "";
  const dl = document.getElementById("learner");
  const l = learner.status;
  if (!l) {
    setFacts(dl, [["learner-version", "checkpoint", "–", learner.error || "no answer"]]);
    return;
  }
  const lag = l.policy_lag;
  setFacts(dl, [
    ["learner-version", "checkpoint", `v${l.checkpoint_version}`, `${l.algorithm} · ${l.mode}`],
    ["learner-updates", "updates", fmtInt(l.updates), `${fmt(l.updates_per_s)}/s`],
    ["learner-loss", "loss", fmt(l.loss, 4), `ε ${fmt(l.epsilon, 3)}`],
    ["learner-consumed", "consumed", fmtInt(l.transitions_consumed), `replay ${fmtInt(l.replay_size)}`],
    ["learner-stream", "stream length", fmtInt(l.stream_length), `lag ${l.consumer_lag < 0 ? "?" : fmtInt(l.consumer_lag)}`],
    ["learner-lag", "policy lag", `${fmt(lag.version_lag_mean, 2)}`, `versions · ${fmt(lag.lag_ms.p50, 0)} ms p50`],
    ["learner-fallback", "fallback share", pct(lag.fallback_fraction, 1), `of ${fmtInt(lag.transitions)} used`],
    ["learner-dropped", "too old / skipped", `${fmtInt(l.transitions_too_old)} / ${fmtInt(l.transitions_skipped)}`],
  ]);
}

// The newest recorded greedy episode (rtrl up --record-every), a link to the file the dashboard serves.
function showRecording(recordings) {
  const node = document.getElementById("recording");
  node.hidden = !(recordings && recordings.enabled);
  if (node.hidden) return;
  const latest = recordings.latest;
  const key = latest ? latest.url : "";
  if (node.dataset.key === key && node.childNodes.length) return;
  node.dataset.key = key;
  if (!latest) {
    node.replaceChildren("Recordings: none yet (one is made when the learner has published a checkpoint)");
    return;
  }
  const version = latest.checkpoint_version === null ? "" : `v${latest.checkpoint_version}`;
  const link = el("a", { id: "recording-link", href: latest.url, target: "_blank", "data-version": version }, `${latest.name}`);
  const facts = [version && `checkpoint ${version}`, latest.return === null ? "" : `greedy return ${fmt(latest.return, 1)}`,
    latest.frames === null ? "" : `${fmtInt(latest.frames)} frames`].filter(Boolean).join(" · ");
  node.replaceChildren("Newest recording: ", link, facts ? ` (${facts})` : "");
}

// ---- charts from state and history --------------------------------------------------------------

function drawCharts() {
  const state = view.state;
  if (!state) return;
  const history = view.history;
  const xMax = state.t, xMin = state.t - Math.min(view.settings.history_s, Math.max(30, state.t - (history.length ? history[0].t : state.t)));
  const timeOpts = { xMin, xMax, xLabels: timeLabels };
  const gatewayNames = state.gateways.map((g, i) => (g.stats && g.stats.gateway_id) || g.address || `gateway ${i}`);
  const perGateway = (key, scale = 1) => state.gateways.map((g, i) => ({
    name: gatewayNames[i], color: colorOf(i),
    points: history.map((p) => [p.t, p.gateways[i] && p.gateways[i][key] !== null && p.gateways[i][key] !== undefined ? p.gateways[i][key] * scale : null]),
  }));

  lineChart(document.getElementById("chart-coverage"), perGateway("coverage_recent", 100),
    { ...timeOpts, yMin: Math.min(90, ...history.flatMap((p) => p.gateways.map((g) => g && g.coverage_recent !== null ? Math.floor(g.coverage_recent * 10) * 10 : 100))), yMax: 100, yFormat: (v) => v.toFixed(0) + "%" });

  const histograms = state.gateways.map((g) => (g.stats ? g.stats.staleness_frames_histogram : []));
  const width = Math.max(0, ...histograms.map((h) => h.length));
  const groups = Array.from({ length: width }, (_, i) => ({ label: String(i) }));
  barChart(document.getElementById("chart-staleness"), groups, state.gateways.map((g, i) => {
    const h = histograms[i], total = h.reduce((a, b) => a + b, 0) || 1;
    return { name: gatewayNames[i], color: colorOf(i), values: groups.map((_, f) => (h[f] || 0) * 100 / total) };
  }), { yFormat: (v) => v.toFixed(0) + "%", empty: "no fresh decision yet" });

  lineChart(document.getElementById("chart-overhead"), state.gateways.flatMap((g, i) => [
    { name: `${gatewayNames[i]} p50`, color: colorOf(i), points: history.map((p) => [p.t, p.gateways[i] ? p.gateways[i].overhead_p50_ms : null]) },
    { name: "p99", color: colorOf(i), dash: true, points: history.map((p) => [p.t, p.gateways[i] ? p.gateways[i].overhead_p99_ms : null]) },
  ]), { ...timeOpts, yMin: 0 });

  const rows = replicaRows(state).filter((r) => r.gw);
  barChart(document.getElementById("chart-replicas"),
    rows.map((r) => ({
      label: r.own && r.own.status ? r.own.status.replica_id : ":" + r.address.split(":").pop(),
      sublabel: `v${r.gw.checkpoint_version}`,
    })),
    [
      { name: "p50", color: "#2563eb", values: rows.map((r) => r.gw.latency_ms.p50) },
      { name: "p99", color: "#93c5fd", values: rows.map((r) => r.gw.latency_ms.p99) },
    ], { yFormat: (v) => fmtCompact(v), twoLineLabels: true, empty: "no replica answered yet" });

  const learnerSeries = (name, key, color, dash) => ({ name, color, dash, points: history.map((p) => [p.t, p.learner ? p.learner[key] : null]) });
  lineChart(document.getElementById("chart-updates"), [learnerSeries("updates/s", "updates_per_s", "#9333ea")], { ...timeOpts, yMin: 0 });
  lineChart(document.getElementById("chart-lag"), [learnerSeries("versions (mean)", "version_lag_mean", "#0891b2")], { ...timeOpts, yMin: 0 });
  lineChart(document.getElementById("chart-stream"), [
    learnerSeries("stream length", "stream_length", "#4b5563"),
    learnerSeries("consumer lag", "consumer_lag", "#dc2626", true),
  ], { ...timeOpts, yMin: 0 });

  lineChart(document.getElementById("chart-returns"), state.gateways.map((g, i) => ({
    name: gatewayNames[i], color: colorOf(i), dots: true, points: g.returns || [],
  })), { xLabels: (sx, lo, hi) => [[sx(lo), `ep ${Math.round(lo)}`, "left"], [sx(hi), `ep ${Math.round(hi)}`, "right"]], empty: "no episode finished yet" });
}

function showSummary(state, rows) {
  const g = state.gateways.filter((x) => x.stats).map((x) => x.stats);
  const decisions = g.reduce((a, s) => a + s.decisions, 0), fresh = g.reduce((a, s) => a + s.decisions_fresh, 0);
  const l = state.learner.status;
  document.getElementById("summary").textContent = [
    `${state.gateways.length} gateway${state.gateways.length === 1 ? "" : "s"}`,
    `${rows.length} replica${rows.length === 1 ? "" : "s"}`,
    decisions ? `coverage ${pct(fresh / decisions)}` : "",
    l ? `checkpoint v${l.checkpoint_version}` : "learner: no answer",
  ].filter(Boolean).join(" · ");
}

// ---- wiring -------------------------------------------------------------------------------------

function applyState(state) {
  view.state = state;
  if (state.point) {
    const last = view.history[view.history.length - 1];
    if (!last || last.t < state.point.t) view.history.push(state.point);
    const cutoff = state.t - view.settings.history_s;
    while (view.history.length && view.history[0].t < cutoff) view.history.shift();
  }
  state.gateways.forEach((g, i) => showGateway(i, g, state.frame_feeds ? state.frame_feeds[i] : null));
  const rows = showReplicas(state);
  const registry = state.registry || {};
  document.getElementById("registry").textContent = registry.enabled
    ? (registry.error ? `registry: ${registry.error}` : "from the registry in Redis and the gateways")
    : "from the gateways and RTRL_INFERENCE_ADDRESSES (no registry: RTRL_REDIS_URL unset)";
  showLearner(state.learner);
  showRecording(state.recordings);
  // Restarts by `rtrl up` (rtrl/supervision.py), already one sentence; absent when nothing was restarted.
  const supervision = document.getElementById("supervision");
  supervision.textContent = state.supervision || "";
  supervision.hidden = !state.supervision;
  showSummary(state, rows);
  drawCharts();
  document.body.dataset.updated = String(state.t);
}

function setConnection(kind, text) {
  const node = document.getElementById("connection");
  node.dataset.state = kind;
  node.textContent = text;
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("open", () => setConnection("live", "live"));
  events.addEventListener("error", () => setConnection("lost", "reconnecting…"));
  events.addEventListener("state", (event) => { view.lastEventMs = Date.now(); applyState(JSON.parse(event.data)); });
  events.addEventListener("frame", (event) => showFrame(JSON.parse(event.data)));
}

async function start() {
  const response = await fetch("/api/state", { cache: "no-store" });
  const full = await response.json();
  view.settings = full.settings;
  view.history = full.history;
  applyState(full.state);
  connect();
  window.addEventListener("resize", drawCharts);
}

start().catch((error) => setConnection("lost", `cannot load /api/state: ${error}`));
