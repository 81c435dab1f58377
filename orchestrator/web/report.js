/* A report.html page: draws the run or study written into it with the dashboard's views. No network. */
(function (global) {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const main = document.getElementById("main");
  if (data.kind === "study") {
    const view = new global.Views.StudyView(main, {
      trialLink: (s, t) => (t.report ? global.Charts.el("a", { href: t.report }, t.run_id) : null),
    });
    view.setStatus(data.status);
  } else {
    const view = new global.Views.RunView(main, {});
    view.setInfo({ runId: data.run_id, state: data.state, created: data.created_at, ended: data.ended_at });
    data.events.forEach((m) => view.addEvent(m));
    view.setInfo({ state: data.state });
    Object.keys(data.diagnostics).forEach((k) => view.setDiagnostics(Number(k), data.diagnostics[k]));
    if (data.summary) view.setSummary(data.summary);
  }
})(window);
