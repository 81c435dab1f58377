/* Is the edge real? (docs/edge.md) The run page's model against the naive forecast per fold, and
 * the study page's selection diagnostics: the verdict, the PBO logit histogram and the in-sample
 * against out-of-sample scatter of the CSCV paper (Bailey, Borwein, Lopez de Prado & Zhu).
 *
 * Edge.runSection(box) returns {foldComplete(m), summary(s)}; Edge.studySection(box) returns
 * {update(selection)}, selection being GET /hpo/{study}'s "selection" (null before a trial
 * completed). Shared by the live dashboard and the reports; text goes in as text.
 */
(function (global) {
  "use strict";
  const { el, fmt, plot, scatter, GREY } = global.Charts;
  const MODEL = "#0072B2";
  const NAIVE = "#E69F00";
  const OVERFIT = "#D55E00";
  const SKILL_DM_P = 0.05;

  function signed(value, digits) {
    if (typeof value !== "number") return "–";
    return (value > 0 ? "+" : "") + fmt(value, digits === undefined ? 4 : digits);
  }

  function scroller(label, headers, rows) {
    return global.Views.table(label, headers, rows);
  }

  function facts(id, rows) {
    return el("dl", { class: "facts", id: id }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function verdictBadge(verdict) {
    const good = verdict === "skill";
    return el("span", { class: "badge " + (good ? "verdict-skill" : "verdict-none"), "data-verdict": verdict }, verdict || "–");
  }

  function selectionBadge(selection) {
    if (!selection) return el("span", { class: "muted" }, "not judged");
    return el("span", { class: "badge selection-" + selection, "data-selection": selection }, selection);
  }

  /* The run page: each fold's model against its naive forecast (train mean, std and up-share). */
  function runSection(box) {
    const live = new Map(); // fold -> fold_complete (nll_diff, dm_p) until the summary comes
    box.replaceChildren(el("p", { class: "muted" }, "Each fold's comparison with the naive forecast appears when it completes."));

    function liveTable() {
      const folds = Array.from(live.keys()).sort((a, b) => a - b);
      box.replaceChildren(
        el("p", { class: "muted" }, "NLL difference: the model's mean log score minus the naive forecast's (below 0: better); DM p: one-sided Diebold-Mariano test."),
        scroller("model against naive per fold", ["fold", "NLL diff", "DM p"],
          folds.map((k) => [`fold ${k}`, signed(live.get(k).nll_diff), fmt(live.get(k).dm_p, 4)])));
    }

    function foldComplete(m) {
      if (m.nll_diff === undefined && m.dm_p === undefined) return;
      live.set(m.fold_id, m);
      liveTable();
    }

    function summary(s) {
      const folds = (s.folds || []).filter((f) => f.skill && f.baseline);
      if (!folds.length) {
        box.replaceChildren(el("p", { class: "muted" }, "This run's summary has no naive baseline (written before it existed)."));
        return;
      }
      const whole = (s.aggregate || {}).skill || {};
      const beats = typeof whole.dm_p === "number" && whole.dm_p < SKILL_DM_P && whole.nll_diff < 0;
      const rows = folds.map((f) => [
        `fold ${f.fold_id}`, fmt(f.metrics.val_nll), fmt(f.baseline.val_nll), signed(f.skill.nll_diff),
        fmt(f.metrics.val_brier_cal), fmt(f.baseline.val_brier), signed(f.skill.brier_skill),
        fmt(f.metrics.DirAcc, 3), fmt(f.baseline.DirAcc, 3), fmt(f.skill.dm_stat, 2), fmt(f.skill.dm_p, 4),
      ]);
      rows.push([el("strong", {}, "all folds"), "", "", signed(whole.nll_diff), "", "", signed(whole.brier_skill), "", "",
        fmt(whole.dm_stat, 2), fmt(whole.dm_p, 4)]);
      box.replaceChildren(
        el("p", { id: "run-vs-naive" }, beats
          ? `The model beats the naive forecast over the whole out-of-sample path (Diebold-Mariano p ${fmt(whole.dm_p, 4)}).`
          : `No evidence that the model beats the naive forecast over the whole out-of-sample path (Diebold-Mariano p ${fmt(whole.dm_p, 4)}).`),
        scroller("model against naive per fold",
          ["fold", "model NLL", "naive NLL", "NLL diff", "model Brier (cal)", "naive Brier", "Brier skill", "model DirAcc", "naive DirAcc", "DM stat", "DM p"], rows));
      const grid = el("div", { class: "grid spaced" });
      box.append(grid);
      const xs = folds.map((f) => f.fold_id);
      plot(grid, {
        id: "chart-vs-naive", title: "Validation NLL per fold: model and naive forecast (lower is better)", xLabel: "fold", yLabel: "val NLL",
        xIntegers: true, xRange: [Math.min(...xs) - 0.5, Math.max(...xs) + 0.5], height: 200,
        description: "Validation NLL of the model and of the naive forecast in each fold",
      }).update([
        { label: "model", colour: MODEL, spanGaps: true },
        { label: "naive (train mean, std)", colour: NAIVE, dash: [6, 4], spanGaps: true },
      ], [xs, folds.map((f) => f.metrics.val_nll), folds.map((f) => f.baseline.val_nll)]);
    }

    return { foldComplete: foldComplete, summary: summary };
  }

  function histogramChart(grid, sel) {
    const h = sel.logit_histogram;
    const centres = h.edges.slice(0, -1).map((e, i) => (e + h.edges[i + 1]) / 2);
    const total = h.counts.reduce((a, b) => a + b, 0);
    plot(grid, {
      id: "chart-pbo", title: `Out-of-sample rank logit of the in-sample choice (PBO ${fmt(sel.pbo, 3)})`,
      xLabel: "logit of the chosen trial's out-of-sample rank", yLabel: "splits", yDigits: 0, height: 240,
      yRange: [0, Math.max(1, ...h.counts) * 1.08], // bars from 0: empty bins are null, not drawn
      xRange: [h.edges[0], h.edges[h.edges.length - 1]],
      description: `Histogram of the logits over ${total} CSCV splits; the share at or left of 0 is the PBO`,
    }).update([
      { label: "at or below the median (overfit)", colour: OVERFIT, kind: "bars" },
      { label: "above the median", colour: MODEL, kind: "bars" },
    ], [centres, h.counts.map((c, i) => (centres[i] < 0 && c ? c : null)), h.counts.map((c, i) => (centres[i] > 0 && c ? c : null))]);
  }

  function performanceChart(grid, sel) {
    const p = sel.performance;
    const fit = sel.performance_fit;
    const lo = Math.min(...p.in_sample);
    const hi = Math.max(...p.in_sample);
    const groups = [[p.in_sample, p.out_of_sample]];
    const series = [{ label: `chosen trial per split (${p.in_sample.length} of ${p.splits}${p.stride > 1 ? `, every ${p.stride}th` : ""})`, colour: MODEL, kind: "points", size: 5 }];
    if (fit) {
      groups.push([[lo, hi], [fit.intercept + fit.slope * lo, fit.intercept + fit.slope * hi]]);
      series.push({ label: `least squares, slope ${fmt(fit.slope, 2)}`, colour: "#000000", width: 1, spanGaps: true, points: false });
    }
    plot(grid, {
      id: "chart-is-oos", title: `${sel.metric}: out-of-sample against in-sample performance of the chosen trial`,
      xLabel: `in-sample mean ${sel.metric}`, yLabel: `out-of-sample mean ${sel.metric}`, height: 240,
      description: "Scatter of each CSCV split's chosen trial: its out-of-sample against its in-sample mean block value",
    }).update(series, scatter(groups));
  }

  /* The study page: verdict, selection, and the CSCV pictures. */
  function studySection(box) {
    let signature = null;

    function update(sel) {
      const next = JSON.stringify(sel === undefined ? null : sel);
      if (next === signature) return; // the page re-renders on every trial event; redraw on change only
      signature = next;
      if (!sel) {
        box.replaceChildren(el("p", { class: "muted" }, "The verdict appears when a trial completes."));
        return;
      }
      if (sel.error) {
        box.replaceChildren(el("p", { class: "error-text" }, "No selection diagnostics: " + sel.error));
        return;
      }
      const naive = sel.best_vs_naive || {};
      const inputs = sel.dsr_inputs || {};
      const splits = sel.performance ? sel.performance.splits : 0;
      box.replaceChildren(
        facts("edge-facts", [
          ["Verdict", verdictBadge(sel.verdict)],
          ["Selection", selectionBadge(sel.selection)],
          ["Best trial vs naive", `trial ${sel.best_trial}: NLL diff ${signed(naive.nll_diff)}, Brier skill ${signed(naive.brier_skill)}, DM p ${fmt(sel.best_dm_p, 4)}`],
          ["Deflated Sharpe", `${fmt(sel.dsr, 3)} (sign strategy SR ${fmt(inputs.sr)} per row over ${inputs.t || "?"} rows; ${fmt(sel.sr0)} expected of the best of ${sel.n_trials} trials without skill)`],
          ["PBO", sel.pbo === null ? "–" : `${fmt(sel.pbo, 3)} over ${splits} CSCV splits (${sel.blocks} blocks of ${sel.rows} shared rows, ${(sel.pbo_trials || []).length} trials)`],
        ]),
        el("p", { class: "muted" }, "skill: the best trial beats the naive forecast (DM p < 0.05) and survives deflation for the number of trials (DSR ≥ 0.95). luck: the in-sample choice lands at or below the out-of-sample median in half the splits or more (PBO ≥ 0.5)."),
      );
      if ((sel.notes || []).length) box.append(el("ul", { class: "warnings" }, sel.notes.map((n) => el("li", {}, n))));
      if (sel.logit_histogram && sel.pbo !== null) {
        const grid = el("div", { class: "grid spaced" });
        box.append(grid);
        histogramChart(grid, sel);
        if (sel.performance && sel.performance.in_sample.length) performanceChart(grid, sel);
      }
    }

    update(null);
    return { update: update };
  }

  global.Edge = { runSection: runSection, studySection: studySection, verdictBadge: verdictBadge };
})(window);
