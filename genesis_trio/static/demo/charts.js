// charts.js: live time-series charts on the vendored uPlot (static/vendor/uplot).

import uPlot from "../vendor/uplot/uPlot.esm.js";

export { uPlot };

/** A palette that stays readable on white. */
export const COLORS = [
  "#3056d3",
  "#1f9d55",
  "#d9822b",
  "#8a3ffc",
  "#0e8a9e",
  "#c2308a",
  "#6b7a00",
  "#7a4a00",
];

/**
 * `HH:MM:SS`, local time.
 * @param {number} seconds Unix time
 * @returns {string}
 */
function timeOfDay(seconds) {
  const d = new Date(seconds * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

/**
 * @typedef {object} LiveSeries
 * @property {string} label
 * @property {string} stroke
 * @property {number} [width]
 * @property {number[]} [dash]
 * @property {string} [fill]
 * @property {(value: number | null) => string} [format] the legend's value
 */

/**
 * @typedef {object} LiveChartOptions
 * @property {LiveSeries[]} series the y series (x is time, Unix seconds)
 * @property {number} [height] CSS pixels (default 220)
 * @property {string} [yLabel]
 * @property {() => [number, number]} [xRange] the visible time range (default: the data's)
 * @property {(self: uPlot, min: number, max: number) => [number, number]} [yRange]
 */

/**
 * A uPlot time-series chart that fills `container`'s width (and follows it).
 * @param {HTMLElement} container
 * @param {LiveChartOptions} options
 * @param {uPlot.AlignedData} [data]
 * @returns {uPlot}
 */
export function liveChart(container, options, data) {
  const height = options.height ?? 220;
  const xRange = options.xRange;
  const yRange = options.yRange;
  /** @type {uPlot.Options} */
  const opts = {
    width: Math.max(200, container.clientWidth),
    height,
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true, ...(xRange ? { range: () => xRange() } : {}) },
      y: yRange ? { range: (self, min, max) => yRange(self, min, max) } : {},
    },
    axes: [
      {
        stroke: "#6a7285",
        grid: { stroke: "#eef0f4" },
        ticks: { stroke: "#dfe3ea" },
        space: 90,
        values: (_self, splits) => splits.map((t) => (t === null ? "" : timeOfDay(t))),
      },
      {
        stroke: "#6a7285",
        grid: { stroke: "#eef0f4" },
        ticks: { stroke: "#dfe3ea" },
        ...(options.yLabel ? { label: options.yLabel } : {}),
        size: 56,
      },
    ],
    series: [
      {},
      ...options.series.map((s) => {
        const format = s.format;
        return {
          label: s.label,
          stroke: s.stroke,
          width: s.width ?? 1.5,
          spanGaps: true,
          points: { show: false },
          ...(s.dash ? { dash: s.dash } : {}),
          ...(s.fill ? { fill: s.fill } : {}),
          ...(format
            ? { value: (/** @type {uPlot} */ _self, /** @type {number | null} */ v) => format(v) }
            : {}),
        };
      }),
    ],
  };
  const empty = /** @type {uPlot.AlignedData} */ ([[], ...options.series.map(() => [])]);
  const chart = new uPlot(opts, data ?? empty, container);
  let width = opts.width;
  new ResizeObserver(() => {
    const next = Math.max(200, container.clientWidth);
    if (Math.abs(next - width) < 2 || !chart.root.isConnected) return;
    width = next;
    chart.setSize({ width, height });
  }).observe(container);
  return chart;
}
