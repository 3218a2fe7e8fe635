// switcher dashboard: a small time-series line chart drawn as SVG: grid, a y axis with the
// caller's labels, a time x axis and one line per series, with a legend below.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const AXIS_COLOR = "#656d76";
const GRID_COLOR = "#eaeef2";
const FONT_PX = 11;
const PAD = { left: 70, right: 12, top: 8, bottom: 20 }; // room for the axes' labels
const X_LABEL_PX = 70; // least room between two time labels (fits "23:59:59")
const Y_LABEL_PX = 30; // least room between two rate labels
// Time steps the x axis may use, in seconds: labels fall on round times of the wall clock.
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text != null) e.textContent = text;
  return e;
}

const pad2 = (n) => String(n).padStart(2, "0");

// Local wall-clock time of `s` (seconds since the epoch), written by hand rather than with
// toLocaleTimeString, whose 24-hour form depends on the locale (some write midnight as 24:00).
function clock(s, withSeconds) {
  const d = new Date(s * 1000);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return withSeconds ? `${hm}:${pad2(d.getSeconds())}` : hm;
}

// The smallest of 1, 2, 5 × a power of ten that is at least `raw`.
function niceStep(raw) {
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
}

class TimeChart {
  // parent: the element the chart fills (its width; `height` px for the plot and its axes).
  // series: [{ label, color }], one line each. formatY: value -> y-axis label.
  constructor(parent, { height, series, formatY }) {
    this.height = height;
    this.series = series;
    this.formatY = formatY;
    this.times = [];
    this.values = series.map(() => []);
    this.svg = svgEl("svg", { height });
    this.svg.style.display = "block";
    this.svg.style.width = "100%";
    // The time labels at the plot's ends may reach past it into the card's padding.
    this.svg.style.overflow = "visible";
    // The legend never changes: HTML, laid out once, a swatch and the label per series.
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.style.cssText = "display: flex; justify-content: center; gap: 16px; margin-top: 4px; font-weight: 600;";
    for (const s of series) {
      const swatch = document.createElement("span");
      swatch.style.cssText = `display: inline-block; width: 10px; height: 10px; margin-right: 5px; border: 2px solid ${s.color};`;
      const key = document.createElement("span");
      key.append(swatch, s.label);
      legend.append(key);
    }
    parent.append(this.svg, legend);
    // The card's width follows the window (a grid column): redraw whenever it changes.
    this.width = 0;
    new ResizeObserver(() => {
      if (this.svg.clientWidth !== this.width) this.draw();
    }).observe(parent);
  }

  // times: seconds since the epoch, ascending; values: one array per series, same length.
  setData(times, values) {
    this.times = times;
    this.values = values;
    this.draw();
  }

  draw() {
    const w = this.svg.clientWidth;
    this.width = w;
    if (w <= PAD.left + PAD.right) return; // not laid out (yet)
    const h = this.height;
    this.svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const plot = { x0: PAD.left, x1: w - PAD.right, y0: PAD.top, y1: h - PAD.bottom };
    const t = this.times;

    // y from 0 to a bit above the highest value (at least 10, so an idle chart has a scale).
    const top = Math.max(10, 1.1 * Math.max(0, ...this.values.flat()));
    // x over the data, at least a second wide so a single point still has a place.
    const tMax = t.length ? t[t.length - 1] : 0;
    const tMin = t.length ? Math.min(t[0], tMax - 1) : -1;
    const xOf = (s) => plot.x0 + ((s - tMin) / (tMax - tMin)) * (plot.x1 - plot.x0);
    const yOf = (v) => plot.y1 - (v / top) * (plot.y1 - plot.y0);
    // Grid lines on half pixels: a 1 px line centred on a whole pixel would blur over two.
    const crisp = (p) => Math.round(p) + 0.5;

    const parts = [];
    const label = (x, y, anchor, text) =>
      svgEl("text", { x, y, "text-anchor": anchor, fill: AXIS_COLOR, "font-size": FONT_PX }, text);

    // y axis: grid and labels at round values.
    const yStep = niceStep(top / Math.max(1, Math.floor((plot.y1 - plot.y0) / Y_LABEL_PX)));
    for (let k = 0; k * yStep <= top; k++) {
      const v = k * yStep;
      const y = crisp(yOf(v));
      parts.push(svgEl("line", { x1: plot.x0, x2: plot.x1, y1: y, y2: y, stroke: GRID_COLOR }));
      parts.push(label(plot.x0 - 6, y + FONT_PX / 3, "end", this.formatY(v)));
    }

    // x axis: grid and wall-clock labels, on multiples of a step that leaves labels room.
    if (t.length) {
      const pxPerS = (plot.x1 - plot.x0) / (tMax - tMin);
      const step = TIME_STEPS.find((s) => s * pxPerS >= X_LABEL_PX) || TIME_STEPS[TIME_STEPS.length - 1];
      for (let s = Math.ceil(tMin / step) * step; s <= tMax; s += step) {
        const x = crisp(xOf(s));
        parts.push(svgEl("line", { x1: x, x2: x, y1: plot.y0, y2: plot.y1, stroke: GRID_COLOR }));
        parts.push(label(x, plot.y1 + FONT_PX + 4, "middle", clock(s, step < 60)));
      }
    }
    parts.push(svgEl("line", {
      x1: plot.x0, x2: plot.x1, y1: crisp(plot.y1), y2: crisp(plot.y1), stroke: AXIS_COLOR,
    }));

    // One line per series, drawn in order (the last one on top).
    this.series.forEach((s, i) => {
      const points = t.map((ts, j) => `${xOf(ts).toFixed(1)},${yOf(this.values[i][j]).toFixed(1)}`);
      parts.push(svgEl("polyline", {
        points: points.join(" "), fill: "none", stroke: s.color, "stroke-width": 2,
        "stroke-linejoin": "round", "data-series": s.label,
      }));
    });

    this.svg.replaceChildren(...parts);
  }
}
