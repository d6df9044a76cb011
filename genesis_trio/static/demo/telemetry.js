// telemetry.js: the telemetry demo (/demo/telemetry) on the browser client genesis.js.
//
// * Subscribes to `telemetry.readings` (`{"type": "reading", "data": {"sensor",
//   "t", "celsius"}}`, examples/telemetry/sensors.py) and `telemetry.alarms`
//   (`{"type": "alarm", "data": {"sensor", "celsius", "threshold", "t"}}`,
//   examples/telemetry/rules.py), and `$presence` to know when the rule
//   component comes and goes.
// * Plots the last 60 s with uPlot: the average of every sensor, a few selected
//   sensors, and the rule component's threshold. Readings are summed into
//   half-second buckets as they arrive; the chart is redrawn four times a second.
// * The threshold is the rule component's: asked with `request("rules",
//   "get_threshold")`, changed with `request("rules", "set_threshold", value)`.
// * An anonymous session kept in sessionStorage: a reload resumes it (the hub
//   forgets an anonymous session 60 s after its tab closed).

import { GenesisClient, RemoteError } from "../genesis.js";
import { COLORS, liveChart } from "./charts.js";
import { byId, clock, connectionBadge, h, hubUrl, loadJson, perFrame } from "./common.js";

/** @typedef {import("../genesis.js").Message} Message */
/** @typedef {import("./charts.js").uPlot} uPlot */

/**
 * @typedef {object} Bucket readings of one half-second
 * @property {number} sum
 * @property {number} n
 * @property {Map<string, {sum: number, n: number}>} sensors
 */

/**
 * @typedef {object} Alarm
 * @property {string} sensor
 * @property {number} celsius
 * @property {number | null} threshold
 * @property {number} t Unix seconds
 */

const READINGS = "telemetry.readings";
const ALARMS = "telemetry.alarms";
const RULES = "rules";
const WINDOW = 60; // seconds plotted
const BUCKET = 0.5; // seconds per point
const REDRAW_MS = 250;
const MAX_ALARMS = 100;
const DEFAULT_SELECTED = 3;
const REQUEST_TIMEOUT = 5000;
const SELECTED_KEY = "telemetry:selected";

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
const isObject = (value) => typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * @param {string} a
 * @param {string} b
 */
const natural = (a, b) => a.localeCompare(b, undefined, { numeric: true });

/** @param {number | null} value */
const celsius = (value) => (value === null || Number.isNaN(value) ? "–" : value.toFixed(1));

const badge = byId("badge", HTMLElement);
const chartBox = byId("chart", HTMLElement);
const sensorBox = byId("sensors", HTMLElement);
const rateFigure = byId("rate", HTMLElement);
const sensorCount = byId("sensor-count", HTMLElement);
const averageFigure = byId("average", HTMLElement);
const alarmCount = byId("alarm-count", HTMLElement);
const thresholdOut = byId("threshold", HTMLOutputElement);
const rulesState = byId("rules-state", HTMLElement);
const thresholdForm = byId("threshold-form", HTMLFormElement);
const thresholdInput = byId("threshold-input", HTMLInputElement);
const thresholdError = byId("threshold-error", HTMLElement);
const alarmList = byId("alarms", HTMLOListElement);

// ---- readings ---------------------------------------------------------------------------

/** @type {Map<number, Bucket>} bucket index (floor(t / BUCKET)) -> readings */
const buckets = new Map();
/** @type {Set<string>} */
const sensors = new Set();
/** @type {string[] | null} the sensors ticked (null: the first few, until one is ticked) */
let chosen = loadJson(sessionStorage, SELECTED_KEY, /** @type {string[] | null} */ (null));
/** @type {number | null} */
let threshold = null;
let readingsSinceRate = 0;
let rateSince = performance.now();

/** @returns {string[]} the sensors plotted */
const selection = () => chosen ?? [...sensors].sort(natural).slice(0, DEFAULT_SELECTED);

/**
 * @param {string} sensor
 * @param {number} t Unix seconds
 * @param {number} value °C
 */
function addReading(sensor, t, value) {
  const index = Math.floor(t / BUCKET);
  let bucket = buckets.get(index);
  if (!bucket) {
    bucket = { sum: 0, n: 0, sensors: new Map() };
    buckets.set(index, bucket);
  }
  bucket.sum += value;
  bucket.n += 1;
  const mine = bucket.sensors.get(sensor);
  if (mine) {
    mine.sum += value;
    mine.n += 1;
  } else bucket.sensors.set(sensor, { sum: value, n: 1 });
  readingsSinceRate++;
  if (!sensors.has(sensor)) {
    sensors.add(sensor);
    renderSensorsSoon();
  }
}

// ---- the chart ----------------------------------------------------------------------------

/** @type {uPlot | null} */
let chart = null;
let chartKey = "";

/** @returns {[number, number]} */
const timeRange = () => {
  const end = Date.now() / 1000;
  return [end - WINDOW, end];
};

/** (Re)build the chart for the current selection. */
function buildChart() {
  const picked = selection();
  chartKey = picked.join(",");
  chart?.destroy();
  chart = liveChart(chartBox, {
    height: 340,
    yLabel: "°C",
    xRange: timeRange,
    series: [
      { label: "average", stroke: "#1d2330", width: 2.5, format: celsius },
      ...picked.map((sensor, i) => ({
        label: sensor,
        stroke: COLORS[i % COLORS.length],
        width: 1.3,
        format: celsius,
      })),
      { label: "threshold", stroke: "#c23030", width: 1.5, dash: [6, 4], format: celsius },
    ],
  });
}

function redraw() {
  const picked = selection();
  if (picked.join(",") !== chartKey || chart === null) buildChart();
  const [start, end] = timeRange();
  const first = Math.floor(start / BUCKET);
  const last = Math.floor(end / BUCKET);
  for (const index of buckets.keys()) if (index < first - 1) buckets.delete(index);
  /** @type {number[]} */
  const x = [];
  /** @type {(number | null)[]} */
  const average = [];
  /** @type {(number | null)[][]} */
  const lines = picked.map(() => []);
  /** @type {(number | null)[]} */
  const limit = [];
  let readings = 0;
  let latest = null;
  for (let index = first; index <= last; index++) {
    const bucket = buckets.get(index);
    x.push(index * BUCKET);
    average.push(bucket ? bucket.sum / bucket.n : null);
    if (bucket) {
      readings += bucket.n;
      latest = bucket.sum / bucket.n;
    }
    picked.forEach((sensor, i) => {
      const mine = bucket?.sensors.get(sensor);
      lines[i].push(mine ? mine.sum / mine.n : null);
    });
    limit.push(threshold);
  }
  chart?.setData([x, average, ...lines, limit]);
  chartBox.dataset.readings = String(readings);
  averageFigure.textContent = celsius(latest);
}

setInterval(() => {
  if (!document.hidden) redraw();
}, REDRAW_MS);

setInterval(() => {
  const t = performance.now();
  rateFigure.textContent = String(Math.round((readingsSinceRate * 1000) / (t - rateSince)));
  readingsSinceRate = 0;
  rateSince = t;
}, 1000);

const renderSensorsSoon = perFrame(() => {
  const picked = selection();
  sensorCount.textContent = String(sensors.size);
  sensorBox.replaceChildren(
    ...[...sensors].sort(natural).map((sensor) => {
      const i = picked.indexOf(sensor);
      const box = h("input", { type: "checkbox", "data-sensor": sensor, checked: i >= 0 });
      box.addEventListener("change", () => {
        const ticked = [...sensorBox.querySelectorAll("input:checked")].map(
          (input) => /** @type {HTMLInputElement} */ (input).dataset.sensor ?? "",
        );
        chosen = ticked;
        sessionStorage.setItem(SELECTED_KEY, JSON.stringify(ticked));
        renderSensorsSoon();
        redraw();
      });
      const label = h("label", {}, box, sensor);
      if (i >= 0) label.style.color = COLORS[i % COLORS.length];
      return label;
    }),
  );
});

// ---- alarms ---------------------------------------------------------------------------------

/** @type {Alarm[]} newest first */
let alarms = [];
/** @type {Set<string>} */
const alarmKeys = new Set();
let alarmsSeen = 0;

/**
 * @param {unknown} data an alarm's data
 * @returns {boolean} whether it was new
 */
function addAlarm(data) {
  if (!isObject(data) || typeof data.celsius !== "number") return false;
  /** @type {Alarm} */
  const alarm = {
    sensor: String(data.sensor ?? "?"),
    celsius: data.celsius,
    threshold: typeof data.threshold === "number" ? data.threshold : null,
    t: typeof data.t === "number" ? data.t : Date.now() / 1000,
  };
  const key = `${alarm.sensor}/${alarm.t}/${alarm.celsius}`;
  if (alarmKeys.has(key)) return false;
  alarmKeys.add(key);
  alarmsSeen++;
  alarms.push(alarm);
  alarms.sort((a, b) => b.t - a.t);
  for (const dropped of alarms.splice(MAX_ALARMS)) {
    alarmKeys.delete(`${dropped.sensor}/${dropped.t}/${dropped.celsius}`);
  }
  renderAlarmsSoon();
  return true;
}

const renderAlarmsSoon = perFrame(() => {
  alarmCount.textContent = String(alarmsSeen);
  if (alarms.length === 0) {
    alarmList.replaceChildren(h("li", { class: "empty" }, "no alarm yet"));
    return;
  }
  alarmList.replaceChildren(
    ...alarms.map((alarm) =>
      h(
        "li",
        { class: "alarm", "data-sensor": alarm.sensor },
        h("time", {}, clock(alarm.t)),
        " ",
        h("b", {}, `${alarm.celsius.toFixed(1)} °C`),
        ` ${alarm.sensor}`,
        alarm.threshold === null ? "" : h("span", { class: "over" }, ` > ${alarm.threshold}`),
      ),
    ),
  );
});

// ---- the rule component ------------------------------------------------------------------

/**
 * @param {"connected" | "away" | "absent" | "unknown"} state
 * @param {string} text
 */
function showRules(state, text) {
  rulesState.dataset.state = state;
  rulesState.textContent = text;
}

/** @param {unknown} value */
function showThreshold(value) {
  if (typeof value !== "number") return;
  threshold = value;
  thresholdOut.value = value.toFixed(1);
  if (document.activeElement !== thresholdInput) thresholdInput.value = String(value);
}

const client = new GenesisClient(hubUrl(), null, {
  storage: sessionStorage,
  storageKey: "genesis:telemetry-demo",
  topics: [READINGS, ALARMS, "$presence"],
});
Object.assign(/** @type {any} */ (window), { telemetryDemo: { client } });

let asking = false;
/** Ask the rule component for its threshold and recent alarms. */
async function askRules() {
  if (asking) return;
  asking = true;
  try {
    showThreshold(await client.request(RULES, "get_threshold", null, { timeout: REQUEST_TIMEOUT }));
    showRules("connected", "the rule component answers");
    const recent = await client.request(RULES, "alarms", null, { timeout: REQUEST_TIMEOUT });
    if (Array.isArray(recent)) for (const alarm of recent) addAlarm(alarm);
  } catch (error) {
    if (error instanceof RemoteError && error.code === "unknown_target") {
      showRules("absent", "the rule component is not running (examples/telemetry/rules.py)");
    } else showRules("unknown", `no answer from the rule component: ${String(error)}`);
  } finally {
    asking = false;
  }
}

client.on("reading", (message) => {
  const data = message.data;
  if (message.topic !== READINGS || !isObject(data) || typeof data.celsius !== "number") return;
  const t = typeof data.t === "number" ? data.t : Date.now() / 1000;
  addReading(String(data.sensor ?? "?"), t, data.celsius);
});

client.on("alarm", (message) => {
  if (message.topic !== ALARMS) return;
  if (addAlarm(message.data) && isObject(message.data)) {
    const raisedAt = message.data.threshold;
    if (typeof raisedAt === "number" && raisedAt !== threshold) void askRules(); // changed elsewhere?
  }
});

client.on("presence", (message) => {
  const data = message.data;
  if (message.topic !== "$presence" || !isObject(data) || data.id !== RULES) return;
  if (data.event === "connected" || data.event === "resumed") void askRules();
  else if (data.event === "disconnected") showRules("away", "the rule component lost its link; it may resume");
  else if (data.event === "left" || data.event === "expired") {
    showRules("absent", "the rule component left");
  }
});

client.on("*", () => undefined);

thresholdForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = Number(thresholdInput.value);
  thresholdError.hidden = true;
  const button = thresholdForm.querySelector("button");
  button?.setAttribute("disabled", "");
  try {
    showThreshold(await client.request(RULES, "set_threshold", value, { timeout: REQUEST_TIMEOUT }));
    showRules("connected", "the rule component answers");
    thresholdInput.blur();
  } catch (error) {
    thresholdError.textContent =
      error instanceof RemoteError && error.code === "unknown_target"
        ? "The rule component is not running."
        : error instanceof Error
          ? error.message
          : String(error);
    thresholdError.hidden = false;
  } finally {
    button?.removeAttribute("disabled");
  }
});

connectionBadge(client, badge);
client.listen("connected", () => void askRules());
client.listen("error", ({ code, msg }) => console.warn(`genesis: ${code}: ${msg}`));
buildChart();
client.connect().catch((/** @type {unknown} */ error) => console.error(error));
