/* Charts for the dashboard and the HTML reports: thin wrappers around the vendored uPlot.
 *
 * Charts.plot(parent, spec) draws one chart (a <figure> with a caption, the canvas and a static
 * legend) and returns {update(series, data), element}. Series kinds: "line", "step", "points",
 * "bars". Data is uPlot's aligned form: [xs, ys1, ys2, ...] with null where a series has no value.
 * The legend is plain text: uPlot's own legend toggles series on click, which a keyboard cannot do.
 */
(function (global) {
  "use strict";

  // Okabe-Ito, the colour-blind-safe palette; yellow last (weak on white), black for references.
  const OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#000000", "#F0E442"];
  const GREY = "#767676";

  function foldColour(k) {
    return OKABE_ITO[((k % OKABE_ITO.length) + OKABE_ITO.length) % OKABE_ITO.length];
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value) && digits === undefined) return String(value);
    const d = digits === undefined ? 4 : digits;
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
    return value.toFixed(d);
  }

  /* An axis label with as many decimals as the tick step has (uPlot's default stops at 3). */
  function tick(v, incr) {
    if (v === null || v === undefined) return "";
    const abs = Math.abs(v);
    if (abs !== 0 && (abs < 1e-4 || abs >= 1e6)) return v.toExponential(1);
    const decimals = (String(+incr.toPrecision(6)).split(".")[1] || "").length;
    return v.toFixed(Math.min(8, decimals));
  }

  function ticks(u, splits, axisIdx, space, incr) {
    return splits.map((v) => tick(v, incr));
  }

  function seriesOptions(spec) {
    const base = { label: spec.label, stroke: spec.colour, width: spec.width || 2, spanGaps: !!spec.spanGaps };
    if (spec.dash) base.dash = spec.dash;
    if (spec.kind === "points") {
      return Object.assign(base, {
        paths: () => null,
        points: { show: true, size: spec.size || 8, width: 2, stroke: spec.colour, fill: spec.fill || spec.colour, space: 0 },
      });
    }
    if (spec.kind === "bars") {
      return Object.assign(base, {
        paths: uPlot.paths.bars({ size: [0.9, 80] }),
        fill: spec.fill || spec.colour + "99",
        points: { show: false },
      });
    }
    if (spec.kind === "step") {
      return Object.assign(base, { paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } });
    }
    return Object.assign(base, { points: { show: spec.points !== false, size: 5, fill: spec.colour } });
  }

  function legendOf(series) {
    return el(
      "ul",
      { class: "legend" },
      series.map((s) =>
        el(
          "li",
          {},
          el("span", {
            class: "swatch swatch-" + (s.kind || "line") + (s.dash ? " swatch-dashed" : "") + (s.fill === "#ffffff" ? " swatch-hollow" : ""),
            style: "--c:" + s.colour,
            "aria-hidden": "true",
          }),
          s.label,
        ),
      ),
    );
  }

  function axisLabels(spec) {
    const axis = (label, extra) =>
      Object.assign({ label: label, labelSize: 18, stroke: "#333", grid: { stroke: "#e4e4e4" }, ticks: { stroke: "#ccc" } }, extra || {});
    const decadesOnly = (u, splits) => splits.map((v) => (Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-6 ? fmt(v) : ""));
    const x = axis(spec.xLabel, Object.assign(
      spec.time ? { space: 90 } : { values: ticks },
      spec.xLog ? { values: decadesOnly } : {},
      spec.xValues ? { values: spec.xValues } : {},
      spec.xIntegers ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {},
    ));
    const y = axis(spec.yLabel, Object.assign({ size: 60 },
      { values: spec.yDigits === undefined ? ticks : (u, splits) => splits.map((v) => fmt(v, spec.yDigits)) }));
    return [x, y];
  }

  function plot(parent, spec) {
    const caption = el("figcaption", {}, spec.title);
    const canvas = el("div", { class: "plot", role: "img", "aria-label": spec.description || spec.title });
    const legend = el("div", { class: "legend-slot" });
    const figure = el("figure", { class: "chart" }, caption, canvas, legend);
    if (spec.id) figure.id = spec.id;
    parent.append(figure);
    const height = spec.height || 220;
    let chart = null;
    let signature = "";

    function width() {
      return Math.max(160, Math.floor(canvas.getBoundingClientRect().width || parent.clientWidth || 600));
    }

    function build(series, data) {
      if (chart) chart.destroy();
      const opts = {
        width: width(),
        height: height,
        legend: { show: false },
        cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 7 } },
        scales: {
          x: Object.assign({ time: !!spec.time }, spec.xRange ? { range: spec.xRange, auto: false } : {}, spec.xLog ? { distr: 3 } : {}),
          y: spec.yRange ? { range: spec.yRange, auto: false } : {},
        },
        axes: axisLabels(spec),
        series: [{ label: spec.xLabel }].concat(series.map(seriesOptions)),
      };
      chart = new uPlot(opts, data, canvas);
      legend.replaceChildren(legendOf(series));
    }

    function update(series, data) {
      const next = JSON.stringify(series);
      if (!chart || next !== signature) {
        signature = next;
        build(series, data);
      } else {
        chart.setData(data);
      }
    }

    if (global.ResizeObserver) {
      new ResizeObserver(() => {
        if (chart && Math.abs(chart.width - width()) > 1) chart.setSize({ width: width(), height: height });
      }).observe(canvas);
    }
    return { element: figure, update: update };
  }

  /* Union of the xs of several [xs, ys] pairs, and each pair's ys aligned to it (null elsewhere). */
  function align(pairs) {
    const xs = Array.from(new Set(pairs.flatMap((p) => p[0]))).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const columns = pairs.map((p) => {
      const ys = new Array(xs.length).fill(null);
      p[0].forEach((x, i) => {
        ys[at.get(x)] = p[1][i];
      });
      return ys;
    });
    return [xs].concat(columns);
  }

  /* Scatter groups [xs, ys] as uPlot data: one row per point (xs may repeat), null in the other groups. */
  function scatter(groups) {
    const rows = groups.flatMap((g, k) => g[0].map((x, i) => [x, k, g[1][i]]));
    rows.sort((a, b) => a[0] - b[0]);
    const data = [rows.map((r) => r[0])];
    groups.forEach((_, k) => data.push(rows.map((r) => (r[1] === k ? r[2] : null))));
    return data;
  }

  global.Charts = { OKABE_ITO: OKABE_ITO, GREY: GREY, foldColour: foldColour, el: el, fmt: fmt, plot: plot, align: align, scatter: scatter };
})(window);
