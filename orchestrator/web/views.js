/* The run and study pages, shared by the live dashboard and the self-contained HTML reports.
 *
 * A RunView is fed wire events (addEvent), the run's REST snapshot (setSnapshot), a fold's
 * diagnostics (setDiagnostics) and the summary (setSummary); a StudyView is fed a study status
 * (GET /hpo/{study}). Neither knows where the data comes from: the dashboard feeds them from REST
 * and /ws, a report from the data written into it. Text from the server goes in as text, never
 * as HTML.
 */
(function (global) {
  "use strict";
  const { el, fmt, plot, align, scatter, foldColour, GREY } = global.Charts;
  const RAW = "#D55E00";
  const CALIBRATED = "#0072B2";
  const METRIC_COLUMNS = [
    ["epoch", "epoch"], ["train_loss", "train loss"], ["val_loss", "val loss"], ["val_auc", "val AUC"],
    ["DirAcc", "DirAcc"], ["ECE", "ECE"], ["val_brier", "val Brier"], ["PIT_KS_p", "PIT KS p"],
    ["conformal_coverage", "coverage"], ["conformal_width", "width"],
  ];

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const d = new Date(seconds * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function isoSeconds(text) {
    if (!text) return null;
    const t = Date.parse(text); // without a zone: local time, as uPlot draws it
    return Number.isNaN(t) ? null : t / 1000;
  }

  function section(root, title, id) {
    const body = el("div", { class: "section-body" });
    root.append(el("section", { id: id, "aria-labelledby": id + "-h" }, el("h2", { id: id + "-h" }, title), body));
    return body;
  }

  /* A table inside a scroll box the keyboard can reach (tabindex) when it is wider than the screen. */
  function table(label, headers, rows) {
    const head = el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)));
    const body = rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))));
    return el("div", { class: "table-scroll", tabindex: "0", role: "region", "aria-label": label },
      el("table", {}, el("thead", {}, head), el("tbody", {}, body)));
  }

  function badge(state) {
    return el("span", { class: "badge state-" + state, "data-state": state }, state);
  }

  function progressBar(done, total, label) {
    const share = total ? Math.min(1, done / total) : 0;
    return el("span", { class: "progress" },
      el("progress", { max: total || 1, value: done, "aria-label": label }),
      ` ${done}/${total || "?"} (${Math.round(share * 100)}%)`);
  }

  function trace(chart, fold, points) {
    const log = (global.__dashboardTrace = global.__dashboardTrace || []);
    if (log.length < 5000) log.push({ chart: chart, fold: fold, points: points });
  }

  class RunView {
    constructor(root, options) {
      this.options = options || {};
      this.epochs = new Map(); // fold -> Map(epoch -> metrics)
      this.complete = new Map(); // fold -> fold_complete
      this.notifications = [];
      this.diagnostics = new Map();
      this.info = { state: "pending", totalFolds: 0, totalEpochs: 0 };
      this.snapshotMetrics = {};
      this.counts = new Map();
      root.replaceChildren();
      this.header = el("header", { class: "run-header" });
      root.append(this.header);
      const curves = section(root, "Learning curves", "curves");
      this.curveGrid = el("div", { class: "grid" });
      curves.append(this.curveGrid);
      this.lossChart = plot(this.curveGrid, {
        id: "chart-loss", title: "Loss per epoch (train dashed, validation solid)", xLabel: "epoch", yLabel: "loss", xIntegers: true,
        description: "Train and validation loss per epoch, one colour per fold",
      });
      this.aucChart = plot(this.curveGrid, {
        id: "chart-auc", title: "Validation AUC per epoch", xLabel: "epoch", yLabel: "val AUC", xIntegers: true,
        description: "Validation AUC per epoch, one colour per fold",
      });
      this.metricsBox = section(root, "Latest metrics per fold", "metrics");
      this.naive = global.Edge.runSection(section(root, "Against the naive forecast", "naive"));
      this.notesBox = section(root, "Notifications", "notifications");
      this.diagBox = section(root, "Fold diagnostics", "diagnostics");
      this.diagBox.append(el("p", { class: "muted", id: "diag-empty" }, "Each fold's calibration pictures appear when it completes."));
      this.summaryBox = section(root, "Summary", "summary");
      this.summaryBox.append(el("p", { class: "muted" }, "The run's summary appears when it completes."));
      this.renderAll();
    }

    setInfo(values) {
      Object.assign(this.info, values);
      this.renderHeader();
    }

    setSnapshot(snap) {
      this.snapshotMetrics = snap.latest_metrics || {};
      const p = snap.progress || {};
      this.setInfo({
        runId: snap.run_id, state: snap.state, created: snap.created_at, ended: snap.ended_at,
        error: snap.error, totalFolds: p.folds_total || this.info.totalFolds,
        foldsDone: p.folds_done, epochsTotal: p.epochs_total, epochsDone: p.epochs_done, files: snap.files,
        queuePosition: snap.queue_position,
      });
      this.renderMetrics();
    }

    addEvent(m) {
      switch (m.type) {
        case "training_start":
          this.setInfo({ totalFolds: m.total_folds, totalEpochs: m.total_epochs, state: "running" });
          break;
        case "epoch_metrics": {
          if (!this.epochs.has(m.fold_id)) this.epochs.set(m.fold_id, new Map());
          this.epochs.get(m.fold_id).set(m.epoch, m);
          this.renderCurves();
          this.renderMetrics();
          this.renderHeader();
          break;
        }
        case "fold_complete":
          this.complete.set(m.fold_id, m);
          this.naive.foldComplete(m);
          if (this.diagnostics.has(m.fold_id)) this.setDiagnostics(m.fold_id, this.diagnostics.get(m.fold_id));
          this.renderMetrics();
          this.renderHeader();
          break;
        case "notification":
          this.notifications.push(m);
          this.renderNotes();
          break;
        case "training_complete":
          this.setInfo({ state: "completed", ended: m.ts || this.info.ended });
          break;
        case "training_error":
          this.setInfo({ state: /cancel/i.test(m.error) ? "cancelled" : "failed", error: m.error, ended: m.ts || this.info.ended });
          break;
        default:
          break;
      }
    }

    renderAll() {
      this.renderHeader();
      this.renderCurves();
      this.renderMetrics();
      this.renderNotes();
    }

    renderHeader() {
      const i = this.info;
      const epochsDone = Math.max(i.epochsDone || 0, Array.from(this.epochs.values()).reduce((n, m) => n + m.size, 0));
      const epochsTotal = i.epochsTotal || i.totalFolds * i.totalEpochs;
      const foldsDone = Math.max(i.foldsDone || 0, this.complete.size);
      const rows = [
        ["State", badge(i.state)],
        ["Epochs", progressBar(epochsDone, epochsTotal, "epochs done")],
        ["Folds", progressBar(foldsDone, i.totalFolds, "folds done")],
        ["Started", when(i.created)],
        ["Ended", when(i.ended)],
      ];
      if (i.queuePosition !== undefined && i.queuePosition !== null) rows.splice(1, 0, ["Queue position", String(i.queuePosition)]);
      if (i.error) rows.push(["Error", el("span", { class: "error-text" }, i.error)]);
      if (!this.facts) {
        this.title = el("h1", {});
        this.facts = el("dl", { class: "facts", id: "run-facts" });
        this.linksBox = el("p", { class: "links" });
        this.header.append(this.title, this.facts, this.linksBox);
      }
      this.title.replaceChildren("Run ", el("code", {}, i.runId || ""));
      this.facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      // links change rarely: rebuilt only then, so a focused link keeps the focus during a run
      const links = this.options.links ? this.options.links(i) : [];
      const signature = links.map((a) => (a instanceof Node ? a.outerHTML : a)).join("");
      if (signature !== this.linksSignature) {
        this.linksSignature = signature;
        this.linksBox.replaceChildren(...links);
        this.linksBox.hidden = !links.length;
      }
    }

    renderCurves() {
      const folds = Array.from(this.epochs.keys()).sort((a, b) => a - b);
      const lossSeries = [];
      const lossPairs = [];
      const aucSeries = [];
      const aucPairs = [];
      for (const k of folds) {
        const rows = Array.from(this.epochs.get(k).values()).sort((a, b) => a.epoch - b.epoch);
        const xs = rows.map((r) => r.epoch);
        lossSeries.push({ label: `fold ${k} train`, colour: foldColour(k), dash: [6, 4], spanGaps: true });
        lossPairs.push([xs, rows.map((r) => r.train_loss)]);
        lossSeries.push({ label: `fold ${k} val`, colour: foldColour(k), spanGaps: true });
        lossPairs.push([xs, rows.map((r) => r.val_loss)]);
        aucSeries.push({ label: `fold ${k}`, colour: foldColour(k), spanGaps: true });
        aucPairs.push([xs, rows.map((r) => r.val_auc)]);
        const points = rows.filter((r) => r.val_loss !== null && r.val_loss !== undefined).length;
        if (this.counts.get(k) !== points) {
          this.counts.set(k, points);
          trace("loss", k, points);
        }
      }
      if (!folds.length) return;
      this.lossChart.update(lossSeries, align(lossPairs));
      this.aucChart.update(aucSeries, align(aucPairs));
      this.lossChart.element.dataset.foldPoints = JSON.stringify(Object.fromEntries(this.counts));
    }

    renderMetrics() {
      const folds = new Set([...this.epochs.keys(), ...this.complete.keys(), ...Object.keys(this.snapshotMetrics).map(Number)]);
      const rows = Array.from(folds).sort((a, b) => a - b).map((k) => {
        const seen = this.epochs.get(k);
        const latest = seen && seen.size ? seen.get(Math.max(...seen.keys())) : this.snapshotMetrics[String(k)] || {};
        const done = this.complete.get(k);
        const status = done
          ? `complete (${done.calibration_method})${done.calibration_warning || done.coverage_warning ? " ⚠" : ""}`
          : "training";
        return [el("span", { class: "fold-name" }, el("span", { class: "swatch", style: "--c:" + foldColour(k), "aria-hidden": "true" }), `fold ${k}`), status]
          .concat(METRIC_COLUMNS.map(([key]) => fmt(latest[key])));
      });
      this.metricsBox.replaceChildren(rows.length
        ? table("latest metrics per fold", ["fold", "status"].concat(METRIC_COLUMNS.map((c) => c[1])), rows)
        : el("p", { class: "muted" }, "No epoch has finished yet."));
    }

    renderNotes() {
      if (!this.notifications.length) {
        this.notesBox.replaceChildren(el("p", { class: "muted" }, "None yet."));
        return;
      }
      this.notesBox.replaceChildren(el("ul", { class: "notes", id: "notes" }, this.notifications.slice(-200).reverse().map((n) =>
        el("li", { class: "note level-" + n.level },
          el("span", { class: "note-meta" }, `${when(n.ts)} · ${n.level} · ${n.kind}`), " ", n.message))));
    }

    setDiagnostics(fold, d) {
      this.diagnostics.set(fold, d);
      const empty = this.diagBox.querySelector("#diag-empty");
      if (empty) empty.remove();
      const id = "fold-diag-" + fold;
      const old = this.diagBox.querySelector("#" + id);
      const card = el("article", { class: "diag-card", id: id, "data-fold": fold });
      if (old) old.replaceWith(card);
      else {
        const after = Array.from(this.diagBox.children).find((c) => Number(c.dataset.fold) > fold);
        this.diagBox.insertBefore(card, after || null);
      }
      const done = this.complete.get(fold) || {};
      const c = d.coverage;
      card.append(el("h3", {}, el("span", { class: "swatch", style: "--c:" + foldColour(fold), "aria-hidden": "true" }),
        `Fold ${fold}`, el("span", { class: "muted" }, ` · ${d.rows} validation rows`)));
      const grid = el("div", { class: "grid grid-3" });
      card.append(grid);
      const rel = d.reliability;
      plot(grid, {
        title: `Reliability (ECE raw ${fmt(rel.raw.ece, 3)}, calibrated ${fmt(rel.calibrated.ece, 3)})`,
        xLabel: "mean predicted p_up", yLabel: "observed up share", xRange: [0, 1], yRange: [0, 1], yDigits: 1, height: 240,
        description: `Reliability diagram of fold ${fold}: observed frequency against predicted probability, raw and calibrated`,
      }).update([
        { label: "perfect", colour: GREY, dash: [4, 4], width: 1, spanGaps: true, points: false },
        { label: "raw p_up", colour: RAW, spanGaps: true },
        { label: `calibrated (${done.calibration_method || "selected"})`, colour: CALIBRATED, spanGaps: true },
      ], align([[[0, 1], [0, 1]], [rel.raw.mean_predicted, rel.raw.observed], [rel.calibrated.mean_predicted, rel.calibrated.observed]]));
      const centres = d.pit.edges.slice(0, -1).map((e, i) => (e + d.pit.edges[i + 1]) / 2);
      plot(grid, {
        title: "PIT histogram (flat when calibrated)", xLabel: "PIT = Φ((y − μ)/σ)", yLabel: "rows", xRange: [0, 1], yDigits: 0, height: 240,
        description: `PIT histogram of fold ${fold} with the uniform expectation`,
      }).update([
        { label: "rows per bin", colour: foldColour(fold), kind: "bars" },
        { label: "uniform", colour: GREY, dash: [4, 4], width: 1, points: false },
      ], [centres, d.pit.counts, centres.map(() => d.pit.expected)]);
      const xs = c.timestamps.map(isoSeconds);
      const covered = c.coverage === null ? "–" : fmt(c.coverage, 3);
      plot(grid, {
        title: `Conformal coverage ${covered} vs target ${fmt(c.target, 2)}`, xLabel: "validation time", yLabel: "coverage",
        time: true, yRange: [Math.min(0.5, ...c.rolling.filter((v) => v !== null)), 1], yDigits: 2, height: 240,
        description: `Conformal interval coverage of fold ${fold} over the validation period against its target`,
      }).update([
        { label: `rolling (${c.window} rows)`, colour: foldColour(fold), points: false },
        { label: "cumulative", colour: "#000000", width: 1, points: false },
        { label: `target ${fmt(c.target, 2)}`, colour: GREY, dash: [4, 4], width: 1, points: false },
      ], [xs, c.rolling, c.cumulative, xs.map(() => c.target)]);
      const warnings = [done.calibration_warning, done.coverage_warning].filter(Boolean);
      if (warnings.length) card.append(el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, "⚠ " + w))));
    }

    setSummary(summary) {
      this.naive.summary(summary);
      const agg = summary.aggregate || {};
      const keys = ["val_auc", "val_nll", "val_brier", "DirAcc", "ECE", "PIT_KS_p", "conformal_coverage", "conformal_width", "MZ_slope"];
      const aggRows = keys.filter((k) => agg[k]).map((k) => [k, fmt(agg[k].mean), fmt(agg[k].std), String(agg[k].n)]);
      const folds = summary.folds || [];
      const foldRows = folds.map((f) => [`fold ${f.fold_id}`, f.calibration_method, String(f.best_epoch), String(f.epochs_run)]
        .concat(keys.map((k) => fmt(f.metrics[k]))));
      const cfg = summary.config || {};
      const cfgRows = Object.keys(cfg).sort().map((k) => [k, typeof cfg[k] === "object" ? JSON.stringify(cfg[k]) : String(cfg[k])]);
      const t = summary.timings || {};
      this.summaryBox.replaceChildren(
        el("h3", {}, "Mean over folds"),
        table("metrics mean over folds", ["metric", "mean", "std", "folds"], aggRows),
        el("h3", {}, "Final validation metrics per fold"),
        table("final metrics per fold", ["fold", "calibration", "best epoch", "epochs"].concat(keys), foldRows),
        el("p", {}, `Data ${(summary.data || {}).source || "?"}: ${fmt((summary.data || {}).samples)} samples, ` +
          `${(summary.data || {}).first_timestamp || "?"} to ${(summary.data || {}).last_timestamp || "?"}. ` +
          `Training ${fmt(t.training_seconds, 1)} s of ${fmt(t.total_seconds, 1)} s on ${summary.executor || "?"}.`),
        el("details", {}, el("summary", {}, "Configuration"), table("configuration", ["field", "value"], cfgRows)),
      );
    }
  }

  class StudyView {
    constructor(root, options) {
      this.options = options || {};
      root.replaceChildren();
      this.header = el("header", { class: "run-header" });
      root.append(this.header);
      this.edge = global.Edge.studySection(section(root, "Is the edge real?", "edge"));
      const charts = section(root, "Objective", "objective");
      this.objective = plot(charts, {
        id: "chart-objective", title: "Objective per trial over time, best so far", xLabel: "trial finished", yLabel: "objective",
        time: true, description: "Objective value of each trial by the time it finished, with the best so far",
      });
      this.paramsBox = section(root, "Each parameter against the objective", "params");
      this.tableBox = section(root, "Trials", "trials");
    }

    setStatus(s) {
      const trials = s.trials || [];
      const best = s.best;
      const rows = [
        ["State", badge(s.state || "idle")],
        ["Metric", `${s.metric || "?"} (${s.direction || "?"})`],
        ["Trials", `${s.trials_done || 0} finished of ${s.trials_total || trials.length}`],
        ["Best", best ? `${fmt(best.value)} (trial ${best.trial})` : "–"],
        ["Edge", s.selection && !s.selection.error ? global.Edge.verdictBadge(s.selection.verdict) : "–"],
      ];
      if (s.error) rows.push(["Error", el("span", { class: "error-text" }, s.error)]);
      this.header.replaceChildren(el("h1", {}, "Study ", el("code", {}, s.study)),
        el("dl", { class: "facts", id: "study-facts" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
      const sign = s.direction === "maximize" ? -1 : 1;
      const finished = (t) => isoSeconds(t.datetime_complete);
      const complete = trials.filter((t) => t.state === "complete" && t.value !== null && finished(t) !== null);
      const pruned = trials.filter((t) => t.state === "pruned" && finished(t) !== null);
      const failed = trials.filter((t) => t.state === "fail" || t.state === "failed");
      const values = complete.map((t) => t.value).concat(pruned.map((t) => t.last_intermediate_value)).filter((v) => v !== null);
      const floor = values.length ? Math.min(...values) : 0;
      let running = null;
      const bestPoints = complete.slice().sort((a, b) => finished(a) - finished(b)).map((t) => {
        if (running === null || sign * t.value < sign * running) running = t.value;
        return [finished(t), running];
      });
      const failedAt = failed.map((t) => isoSeconds(t.datetime_complete) || isoSeconds(t.datetime_start)).filter((x) => x !== null);
      this.objective.update([
        { label: "complete", colour: CALIBRATED, kind: "points" },
        { label: "pruned (last reported value)", colour: "#E69F00", kind: "points", fill: "#ffffff" },
        { label: "failed (no value; drawn at the lowest)", colour: "#CC79A7", kind: "points", size: 10 },
        { label: "best so far", colour: "#000000", kind: "step", spanGaps: true },
      ], scatter([
        [complete.map(finished), complete.map((t) => t.value)],
        [pruned.map(finished), pruned.map((t) => t.last_intermediate_value)],
        [failedAt, failedAt.map(() => floor)],
        [bestPoints.map((p) => p[0]), bestPoints.map((p) => p[1])],
      ]));
      this.objective.element.dataset.trials = String(trials.length);
      this.edge.update(s.selection);
      this.renderParams(complete, pruned, failed.length);
      this.renderTable(s, trials);
    }

    renderParams(complete, pruned, failedCount) {
      const names = Array.from(new Set(complete.concat(pruned).flatMap((t) => Object.keys(t.params || {})))).sort();
      this.paramsBox.replaceChildren();
      if (!names.length) {
        this.paramsBox.append(el("p", { class: "muted" }, "No finished trial yet."));
        return;
      }
      const grid = el("div", { class: "grid grid-3" });
      this.paramsBox.append(grid);
      for (const name of names) {
        const all = complete.concat(pruned).map((t) => t.params[name]).filter((v) => v !== undefined && v !== null);
        const numeric = all.every((v) => typeof v === "number");
        const categories = numeric ? [] : Array.from(new Set(all.map(String))).sort();
        const x = (v) => (numeric ? v : categories.indexOf(String(v)));
        const has = (t) => t.params && t.params[name] !== undefined && t.params[name] !== null;
        const positive = numeric && all.every((v) => v > 0);
        const log = positive && Math.max(...all) / Math.min(...all) >= 100;
        plot(grid, {
          title: name, xLabel: name + (log ? " (log)" : ""), yLabel: "objective", height: 200, xLog: log,
          xValues: numeric ? undefined : (u, splits) => splits.map((v) => categories[v] === undefined ? "" : categories[v]),
          xRange: numeric ? undefined : [-0.5, categories.length - 0.5],
          description: `Objective against ${name}`,
        }).update([
          { label: "complete", colour: CALIBRATED, kind: "points" },
          { label: "pruned", colour: "#E69F00", kind: "points", fill: "#ffffff" },
        ], scatter([
          [complete.filter(has).map((t) => x(t.params[name])), complete.filter(has).map((t) => t.value)],
          [pruned.filter(has).map((t) => x(t.params[name])), pruned.filter(has).map((t) => t.last_intermediate_value)],
        ]));
      }
      if (failedCount) this.paramsBox.append(el("p", { class: "muted" }, `${failedCount} failed trial(s) have no value and are not drawn here.`));
    }

    renderTable(s, trials) {
      const names = Array.from(new Set(trials.flatMap((t) => Object.keys(t.params || {})))).sort();
      const rows = trials.slice().sort((a, b) => a.number - b.number).map((t) => {
        const link = this.options.trialLink ? this.options.trialLink(s, t) : null;
        return [String(t.number), el("span", { class: "trial-" + t.state }, t.state), fmt(t.value), fmt(t.duration_seconds, 1),
          t.datetime_start ? when(isoSeconds(t.datetime_start)) : "–"]
          .concat(names.map((n) => fmt((t.params || {})[n])))
          .concat([link || (t.run_id || "–"), t.error || ""]);
      });
      this.tableBox.replaceChildren(table("trials", ["trial", "state", "value", "seconds", "started"].concat(names, ["run", "error"]), rows));
    }
  }

  global.Views = { RunView: RunView, StudyView: StudyView, when: when, table: table, badge: badge, progressBar: progressBar, isoSeconds: isoSeconds };
})(window);
