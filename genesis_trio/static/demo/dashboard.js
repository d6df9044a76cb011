// dashboard.js: the hub's dashboard (/dashboard) on the browser client genesis.js.
//
// * Plots: the system topic `$stats` carries get_stats() once a second
//   (docs/api.md, "Live statistics"); rates (messages/s in and out) are the
//   counters' differences over the time between two ticks. The last 5 minutes.
// * Components: `GET /api/components` once (following `next`), then every
//   `$presence` event updates the table (docs/api.md, "Presence"). Reloaded
//   when the session could not be continued (a new epoch may have missed events).
// * No polling: everything after the first load arrives as messages.

import { GenesisClient } from "../genesis.js";
import { COLORS, liveChart } from "./charts.js";
import { byId, clock, connectionBadge, fetchAllPages, h, hubUrl, perFrame } from "./common.js";

/** @typedef {import("./charts.js").uPlot} uPlot */

/**
 * A row of `GET /api/components` (docs/api.md); the fields this page shows.
 * @typedef {object} Component
 * @property {string} id
 * @property {boolean} connected
 * @property {boolean} [anonymous]
 * @property {boolean} [local]
 * @property {string} node
 * @property {string[]} topics
 * @property {number | null} connected_since
 * @property {number | null} disconnected_since
 */

const SPAN = 300; // seconds plotted, at most
const KEEP = 900; // ticks kept
const MAX_ROWS = 500;

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * @param {Record<string, unknown>} stats
 * @param {string} name
 * @returns {number | null}
 */
const num = (stats, name) => {
  const value = stats[name];
  return typeof value === "number" && Number.isFinite(value) ? value : null;
};

/**
 * @param {number | null} value
 * @param {number} [digits]
 */
const fmt = (value, digits = 0) =>
  value === null ? "–" : value.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });

// ---- the plots ----------------------------------------------------------------------------

/** The series kept, by name: one value per tick. */
const series = {
  /** @type {number[]} */ t: [],
  /** @type {(number | null)[]} */ connections: [],
  /** @type {(number | null)[]} */ sessions: [],
  /** @type {(number | null)[]} */ inRate: [],
  /** @type {(number | null)[]} */ outRate: [],
  /** @type {(number | null)[]} */ errors: [],
  /** @type {(number | null)[]} */ recoveries: [],
  /** @type {(number | null)[]} */ collapse: [],
  /** @type {(number | null)[]} */ rtt: [],
  /** @type {(number | null)[]} */ rttP99: [],
};

/** @returns {[number, number]} the last SPAN seconds, or since the first tick (60 s at least) */
const timeRange = () => {
  const end = Date.now() / 1000;
  const first = series.t[0] ?? end;
  return [end - Math.min(SPAN, Math.max(60, end - first + 5)), end];
};

/** @param {number} floor a y range from 0 to at least `floor` */
const fromZero =
  (floor) =>
  (/** @type {uPlot} */ _self, /** @type {number} */ _min, /** @type {number} */ max) =>
    /** @type {[number, number]} */ ([0, Math.max(floor, (max || 0) * 1.15)]);

/** @param {number | null} v */
const whole = (v) => fmt(v);
/** @param {number | null} v */
const tenth = (v) => fmt(v, 1);
/** @param {number | null} v */
const hundredth = (v) => fmt(v, 2);

const charts = {
  messages: liveChart(byId("chart-messages", HTMLElement), {
    height: 240,
    xRange: timeRange,
    yRange: fromZero(5),
    series: [
      { label: "in /s", stroke: COLORS[0], width: 2, fill: "rgba(48, 86, 211, 0.08)", format: tenth },
      { label: "out /s", stroke: COLORS[1], width: 2, format: tenth },
    ],
  }),
  connections: liveChart(byId("chart-connections", HTMLElement), {
    xRange: timeRange,
    yRange: fromZero(2),
    series: [
      { label: "active connections", stroke: COLORS[0], width: 2, format: whole },
      { label: "sessions", stroke: COLORS[3], width: 1.5, dash: [5, 3], format: whole },
    ],
  }),
  collapse: liveChart(byId("chart-collapse", HTMLElement), {
    xRange: timeRange,
    yRange: fromZero(2),
    series: [{ label: "messages per frame", stroke: COLORS[2], width: 2, format: hundredth }],
  }),
  errors: liveChart(byId("chart-errors", HTMLElement), {
    xRange: timeRange,
    yRange: fromZero(2),
    series: [
      { label: "errors contained", stroke: "#c23030", width: 2, format: whole },
      { label: "recovery events", stroke: COLORS[4], width: 2, format: whole },
    ],
  }),
  rtt: liveChart(byId("chart-rtt", HTMLElement), {
    xRange: timeRange,
    yRange: fromZero(1),
    series: [
      { label: "EWMA", stroke: COLORS[0], width: 2, format: tenth },
      { label: "p99", stroke: COLORS[5], width: 1.5, format: tenth },
    ],
  }),
};

const messagesBox = byId("chart-messages", HTMLElement);
const statsError = byId("stats-error", HTMLElement);

const redraw = perFrame(() => {
  const s = series;
  charts.messages.setData([s.t, s.inRate, s.outRate]);
  charts.connections.setData([s.t, s.connections, s.sessions]);
  charts.collapse.setData([s.t, s.collapse]);
  charts.errors.setData([s.t, s.errors, s.recoveries]);
  charts.rtt.setData([s.t, s.rtt, s.rttP99]);
  messagesBox.dataset.points = String(s.t.length);
});
// The time axis slides even between ticks (and when they stop).
setInterval(() => {
  if (!document.hidden) redraw();
}, 1000);

/** @type {{at: number, in: number, out: number} | null} the previous tick's counters */
let previous = null;

/** @param {Record<string, unknown>} stats a `$stats` tick: get_stats() */
function onStats(stats) {
  statsError.hidden = true;
  const at = performance.now();
  const t = Date.now() / 1000;
  const messagesIn = num(stats, "messages_in");
  const messagesOut = num(stats, "messages_out");
  /** @type {number | null} */
  let inRate = null;
  /** @type {number | null} */
  let outRate = null;
  if (previous && messagesIn !== null && messagesOut !== null) {
    const seconds = (at - previous.at) / 1000;
    if (seconds < 0.2) return; // ticks that queued up while we were busy: wait for a longer span
    if (messagesIn >= previous.in && messagesOut >= previous.out) {
      inRate = (messagesIn - previous.in) / seconds;
      outRate = (messagesOut - previous.out) / seconds;
    } // else: the counters went back, a new hub process: start again
  }
  if (messagesIn !== null && messagesOut !== null) previous = { at, in: messagesIn, out: messagesOut };

  const s = series;
  s.t.push(t);
  s.connections.push(num(stats, "active_connections"));
  s.sessions.push(num(stats, "sessions"));
  s.inRate.push(inRate);
  s.outRate.push(outRate);
  s.errors.push(num(stats, "errors_contained"));
  s.recoveries.push(num(stats, "recovery_events"));
  s.collapse.push(num(stats, "collapse_factor"));
  s.rtt.push(num(stats, "rtt_ewma_ms"));
  s.rttP99.push(num(stats, "rtt_p99_ms"));
  if (s.t.length > KEEP) for (const values of Object.values(s)) values.splice(0, s.t.length - KEEP);

  byId("fig-connections", HTMLElement).textContent = whole(num(stats, "active_connections"));
  byId("fig-sessions", HTMLElement).textContent = whole(num(stats, "sessions"));
  byId("fig-in", HTMLElement).textContent = tenth(inRate);
  byId("fig-out", HTMLElement).textContent = tenth(outRate);
  byId("fig-errors", HTMLElement).textContent = whole(num(stats, "errors_contained"));
  byId("fig-recoveries", HTMLElement).textContent = whole(num(stats, "recovery_events"));
  byId("fig-collapse", HTMLElement).textContent = hundredth(num(stats, "collapse_factor"));
  byId("fig-rtt", HTMLElement).textContent = tenth(num(stats, "rtt_ewma_ms"));
  const node = stats.node_id;
  byId("node", HTMLElement).textContent = typeof node === "string" ? `hub ${node}` : "";
  redraw();
}

// ---- the components table ------------------------------------------------------------------

/** @type {Map<string, Component>} */
const components = new Map();
/** @type {Record<string, unknown>[] | null} events that came while the table loads */
let held = [];
const tableBody = byId("components", HTMLTableSectionElement);
const summary = byId("component-summary", HTMLElement);
const tableError = byId("components-error", HTMLElement);

/** @param {Component} row */
const lastChange = (row) => Math.max(row.connected_since ?? 0, row.disconnected_since ?? 0);

/** @param {Record<string, unknown>} event a `$presence` event's data */
function applyPresence(event) {
  const at = typeof event.at === "number" ? event.at : Date.now() / 1000;
  const node = typeof event.node === "string" ? event.node : "";
  if (event.event === "started") {
    for (const row of components.values()) {
      if (row.node === node && row.connected) {
        row.connected = false;
        row.disconnected_since = at;
      }
    }
    return;
  }
  const id = event.id;
  if (typeof id !== "string") return;
  const row = components.get(id);
  if (row && at < lastChange(row)) return; // older than what the table shows
  switch (event.event) {
    case "connected":
    case "resumed": {
      const topics = Array.isArray(event.topics) ? event.topics.map(String) : (row?.topics ?? []);
      components.set(id, {
        id,
        connected: true,
        anonymous: row?.anonymous ?? id.startsWith("anon-"),
        local: row?.local ?? false,
        node,
        topics,
        connected_since: at,
        disconnected_since: null,
      });
      break;
    }
    case "disconnected":
      if (row) {
        row.connected = false;
        row.disconnected_since = at;
      }
      break;
    case "left":
    case "expired":
      components.delete(id);
      break;
  }
}

const renderTable = perFrame(() => {
  const rows = [...components.values()].sort((a, b) =>
    a.id.localeCompare(b.id, undefined, { numeric: true }),
  );
  const connected = rows.filter((row) => row.connected).length;
  summary.textContent = `(${rows.length}, ${connected} connected)`;
  tableBody.replaceChildren(
    ...rows.slice(0, MAX_ROWS).map((row) => {
      const since = row.connected ? row.connected_since : row.disconnected_since;
      const kind = [row.local ? "in-process" : "", row.anonymous ? "anonymous" : ""].filter(Boolean).join(", ");
      return h(
        "tr",
        { "data-id": row.id, "data-connected": String(row.connected) },
        h("td", {}, h("span", { class: "dot" }), row.id),
        h("td", {}, row.connected ? "connected" : "away (session kept)"),
        h("td", {}, since ? clock(since) : "–"),
        h("td", { class: "topics" }, row.topics.join(" ")),
        h("td", {}, row.node),
        h("td", {}, kind),
      );
    }),
    ...(rows.length > MAX_ROWS ? [h("tr", {}, h("td", { colspan: 6 }, `… and ${rows.length - MAX_ROWS} more`))] : []),
  );
});

/** Load the table from the API; events held meanwhile are applied after. */
async function loadComponents() {
  held ??= [];
  try {
    /** @type {Component[]} */
    const items = await fetchAllPages("/api/components?limit=1000");
    components.clear();
    for (const item of items) components.set(item.id, item);
    tableError.hidden = true;
  } catch (error) {
    tableError.textContent = `Cannot load the components: ${String(error)} (the API answers loopback clients only, unless the hub runs with --api-public)`;
    tableError.hidden = false;
  }
  for (const event of held) applyPresence(event);
  held = null;
  renderTable();
}

// ---- the client --------------------------------------------------------------------------------

const client = new GenesisClient(hubUrl(), null, {
  storage: sessionStorage,
  storageKey: "genesis:dashboard-demo",
  topics: ["$stats", "$presence"],
});
Object.assign(/** @type {any} */ (window), { dashboardDemo: { client, components, series } });

client.on("stats", (message) => {
  if (message.topic === "$stats" && isObject(message.data)) onStats(message.data);
});
client.on("presence", (message) => {
  if (message.topic !== "$presence" || !isObject(message.data)) return;
  if (held) held.push(message.data);
  else {
    applyPresence(message.data);
    renderTable();
  }
});
client.on("*", () => undefined);
// A tick the hub could not encode for us arrives as a notice (§2.3), not as data.
client.listen("message", (message) => {
  if (message.type !== "stats" || !message.error) return;
  statsError.textContent = `The hub sent a $stats tick this page cannot read (${message.error.code}: ${message.error.msg ?? ""}).`;
  statsError.hidden = false;
});

connectionBadge(client, byId("badge", HTMLElement));
let loaded = false;
client.listen("connected", ({ recovered }) => {
  // The first time (a reload resumes the session, but the table is new), or
  // when the session could not continue: events may have been missed.
  if (loaded && recovered) return;
  loaded = true;
  void loadComponents();
});
client.listen("error", ({ code, msg }) => console.warn(`genesis: ${code}: ${msg}`));
client.connect().catch((/** @type {unknown} */ error) => console.error(error));
