/* The live dashboard at /ui: runs list, run page, study page, fed by REST and /ws.
 *
 * Pages are hash routes (#/, #/run/<id>, #/study/<name>). With a token configured the page asks
 * for it, keeps it in sessionStorage (this tab only), and sends it as "Authorization: Bearer" on
 * REST and as ?token= on the /ws URL (a browser cannot set headers on a WebSocket). It never goes
 * into the address bar, the history or the console. A dropped /ws reconnects with ?since= the last
 * seq it processed, so nothing is missed or repeated; after the server's event hub restarted
 * (close code 4012) with the since= the close reason names. The job store's health (GET /, every
 * few seconds) shows in the top bar while it fails.
 */
(function (global) {
  "use strict";
  const { el, fmt } = global.Charts;
  const { RunView, StudyView, when, table, badge, progressBar } = global.Views;
  const TOKEN_KEY = "orchestrator.dashboard.token";
  const RUN_TYPES = ["dataset_ready", "training_start", "epoch_metrics", "fold_complete", "training_complete", "training_error", "notification"];
  const LIST_TYPES = ["training_start", "epoch_metrics", "fold_complete", "training_complete", "training_error"];
  const FEATURES = (document.body.dataset.features || "").split(/\s+/);
  const main = document.getElementById("main");
  const liveStatus = document.getElementById("live-status");
  const storeStatus = document.getElementById("store-status");
  const STORE_POLL_MS = 5000;
  const forget = document.getElementById("forget-token");

  let token = null;
  try {
    token = global.sessionStorage.getItem(TOKEN_KEY);
  } catch (err) {
    token = null; // storage disabled: the token lives in memory only
  }
  let page = 0; // bumped on every navigation; work of an older page stops
  let live = null;

  class Unauthorized extends Error {}

  function headers() {
    return token ? { Authorization: "Bearer " + token, Accept: "application/json" } : { Accept: "application/json" };
  }

  async function api(path) {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} from ${path}`);
    return body;
  }

  function setLive(text) {
    liveStatus.textContent = text;
    liveStatus.dataset.state = text.split(" ")[0];
  }

  function throttle(fn, ms) {
    let last = 0;
    let timer = null;
    return function () {
      const wait = last + ms - Date.now();
      if (wait <= 0) {
        last = Date.now();
        fn();
      } else if (!timer) {
        timer = setTimeout(() => {
          timer = null;
          last = Date.now();
          fn();
        }, wait);
      }
    };
  }

  /* One /ws subscription; after a drop it checks the server answers REST, then resumes with since. */
  class Live {
    constructor(params, onMessage) {
      this.params = params;
      this.onMessage = onMessage;
      this.since = null;
      this.closed = false;
      this.delay = 500;
      this.open();
    }

    url() {
      const query = new URLSearchParams(this.params);
      if (this.since !== null) query.set("since", String(this.since));
      if (token) query.set("token", token);
      return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws?" + query.toString();
    }

    open() {
      setLive(this.since === null ? "connecting" : "resuming");
      const ws = (this.ws = new WebSocket(this.url()));
      ws.onopen = () => {
        this.delay = 500;
        setLive("live");
      };
      ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          return; // not a message: skip it, keep the stream
        }
        if (typeof message.seq === "number") this.since = message.seq;
        this.onMessage(message);
      };
      ws.onclose = (event) => {
        if (this.closed) return;
        if (event.code === 4400) {
          setLive("refused: " + event.reason);
          return;
        }
        const resume = event.code === 4012 ? /since=(\d+)/.exec(event.reason || "") : null;
        if (resume) this.since = Math.min(this.since === null ? Infinity : this.since, Number(resume[1]));
        setLive("reconnecting");
        this.retry();
      };
    }

    retry() {
      setTimeout(() => {
        if (this.closed) return;
        fetch("/", { headers: headers(), cache: "no-store" }).then(
          (r) => (r.ok ? this.open() : this.retry()),
          () => this.retry(),
        );
      }, this.delay);
      this.delay = Math.min(5000, this.delay * 2);
    }

    close() {
      this.closed = true;
      if (this.ws) this.ws.close(1000);
    }
  }

  function link(href, text, authed) {
    return el("a", { href: href, "data-authed": authed ? "true" : null }, text);
  }

  function headline(latest) {
    const folds = Object.values(latest || {});
    const mean = (key) => {
      const values = folds.map((m) => m[key]).filter((v) => typeof v === "number");
      return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
    };
    return [fmt(mean("val_auc"), 3), fmt(mean("val_nll"), 3), fmt(mean("DirAcc"), 3), fmt(mean("conformal_coverage"), 3)];
  }

  function runsTable(runs) {
    if (!runs.length) return el("p", { class: "muted" }, "No run yet: start one with POST /train or python -m orchestrator serve --train-on-start.");
    const queued = runs.some((r) => r.queue_position !== undefined && r.queue_position !== null);  // a run waits
    const heads = ["run", "state"].concat(queued ? ["queue"] : [], ["epochs", "started", "ended", "val AUC", "val NLL", "DirAcc", "coverage"]);
    const rows = runs.map((r) => {  // GET /runs answers newest first
      const p = r.progress || {};
      return [link("#/run/" + encodeURIComponent(r.run_id), r.run_id), badge(r.state)]
        .concat(queued ? [r.queue_position === null || r.queue_position === undefined ? "–" : String(r.queue_position)] : [])
        .concat([progressBar(p.epochs_done || 0, p.epochs_total || 0, "epochs of " + r.run_id), when(r.created_at), when(r.ended_at)])
        .concat(headline(r.latest_metrics));
    });
    const box = table("runs", heads, rows);
    box.id = "runs-table";
    return box;
  }

  function studiesTable(studies) {
    if (!studies.length) return el("p", { class: "muted" }, "No study yet: start one with POST /hpo.");
    return table("studies", ["study", "state", "started", "ended", "error"], studies.slice().reverse().map((s) =>
      [link("#/study/" + encodeURIComponent(s.study), s.study), badge(s.state), when(s.started_at), when(s.ended_at), s.error || ""]));
  }

  async function showRuns(mine) {
    document.title = "Runs · forecast orchestrator";
    const runsBox = el("div", {}, el("p", { class: "muted" }, "Loading…"));
    const studiesBox = el("div");
    const hpo = FEATURES.includes("hpo");
    main.replaceChildren(el("h1", {}, "Runs"), runsBox);
    if (hpo) main.append(el("h2", {}, "Studies"), studiesBox);
    const render = async () => {
      const runs = (await api("/runs")).runs;
      const studies = hpo ? (await api("/hpo")).studies : [];
      if (mine !== page) return;
      runsBox.replaceChildren(runsTable(runs));
      if (hpo) studiesBox.replaceChildren(studiesTable(studies));
    };
    await render();
    if (mine === page) live = new Live({ types: LIST_TYPES.join(",") }, throttle(() => render().catch(fail), 1000));
  }

  function runLinks(runId, info) {
    const files = info.files || {};
    const out = [];
    if (files.summary) {
      out.push(link(files.summary.replace(/summary\.json$/, "report.html"), "report.html", true), " · ");
      out.push(link(files.summary, "summary.json", true), " · ");
    }
    if (files.events) out.push(link(files.events, "events.jsonl", true), " · ");
    (files.predictions || []).forEach((p) => out.push(link(p, p.split("/").pop(), true), " · "));
    out.push(link("#/", "all runs"));
    return out;
  }

  async function showRun(runId, mine) {
    document.title = `Run ${runId} · forecast orchestrator`;
    const root = el("div");
    main.replaceChildren(root);
    const view = new RunView(root, { links: (info) => runLinks(runId, info) });
    const base = "/runs/" + encodeURIComponent(runId);
    const diagnosed = new Set();
    let summarized = false;
    const diagnose = (fold) => {
      if (diagnosed.has(fold)) return;
      diagnosed.add(fold);
      api(`${base}/folds/${fold}/diagnostics`).then((d) => mine === page && view.setDiagnostics(fold, d), (err) => {
        diagnosed.delete(fold);
        fail(err);
      });
    };
    const snapshot = async () => {
      const snap = await api(base);
      if (mine !== page) return;
      view.setSnapshot(snap);
      if (snap.state === "completed") {
        for (let k = 0; k < (snap.progress || {}).folds_done; k++) diagnose(k);
        if (!summarized) {
          summarized = true;
          view.setSummary(await api(base + "/summary"));
        }
      }
    };
    await snapshot();
    const refresh = throttle(() => snapshot().catch(fail), 500);
    if (mine !== page) return;
    live = new Live({ run_id: runId, types: RUN_TYPES.join(",") }, (message) => {
      if (message.type === "history_gap") {
        view.addEvent({ type: "notification", level: "warning", kind: "history_gap", message: message.message, ts: Date.now() / 1000 });
        return;
      }
      view.addEvent(message);
      if (message.type === "fold_complete") diagnose(message.fold_id);
      if (["training_start", "fold_complete", "training_complete", "training_error"].includes(message.type)) refresh();
    });
  }

  async function showStudy(name, mine) {
    document.title = `Study ${name} · forecast orchestrator`;
    const root = el("div");
    main.replaceChildren(root);
    const view = new StudyView(root, {
      trialLink: (s, t) => (t.run_id && t.run_state === "completed"
        ? link(`/reports/hpo/${encodeURIComponent(s.study)}/runs/${encodeURIComponent(t.run_id)}/report.html`, t.run_id, true)
        : null),
    });
    const render = async () => {
      const status = await api("/hpo/" + encodeURIComponent(name));
      if (mine === page) view.setStatus(status);
    };
    await render();
    if (mine === page) live = new Live({ run_id: "hpo_" + name, types: "hpo_trial" }, throttle(() => render().catch(fail), 1000));
  }

  function askToken(message) {
    setLive("token needed");
    const input = el("input", { id: "token-input", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
    const form = el("form", { id: "token-form", class: "token-form" },
      el("h1", {}, "Token needed"),
      el("p", {}, message),
      el("label", { for: "token-input" }, "Server token"), " ", input, " ",
      el("button", { type: "submit" }, "Connect"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      token = input.value.trim() || null;
      try {
        if (token) global.sessionStorage.setItem(TOKEN_KEY, token);
      } catch (err) {
        // storage disabled: memory only
      }
      route();
    });
    main.replaceChildren(form);
    input.focus();
  }

  function fail(err) {
    if (err instanceof Unauthorized) {
      const had = !!token;
      token = null;
      try {
        global.sessionStorage.removeItem(TOKEN_KEY);
      } catch (e) {
        // nothing stored
      }
      page++;
      if (live) live.close();
      askToken(had ? "The server refused that token; enter it again." : "This server requires a token for its API.");
      return;
    }
    main.append(el("p", { class: "error-text", role: "alert" }, String(err.message || err)));
  }

  function route() {
    const mine = ++page;
    if (live) live.close();
    live = null;
    forget.hidden = !token;
    const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
    const arg = decodeURIComponent(rest.join("/"));
    const shown = name === "run" && arg ? showRun(arg, mine) : name === "study" && arg ? showStudy(arg, mine) : showRuns(mine);
    shown.catch(fail);
  }

  /* Report files need the token too: with one, fetch them with the header and open a blob copy. */
  document.addEventListener("click", (event) => {
    const anchor = event.target.closest && event.target.closest("a[data-authed]");
    if (!anchor || !token) return;
    event.preventDefault();
    fetch(anchor.getAttribute("href"), { headers: headers() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`${r.status} from ${anchor.getAttribute("href")}`))))
      .then((blob) => global.open(URL.createObjectURL(blob), "_blank", "noopener"))
      .catch(fail);
  });

  forget.addEventListener("click", () => {
    token = null;
    try {
      global.sessionStorage.removeItem(TOKEN_KEY);
    } catch (err) {
      // nothing stored
    }
    route();
  });
  /* The job store's health from GET /: shown in the top bar while the store fails. */
  function watchStore() {
    fetch("/", { headers: headers(), cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((status) => {
        const store = status && status.store;
        const failing = Boolean(store && !store.ok);
        storeStatus.hidden = !failing;
        if (failing) {
          const since = store.since ? new Date(store.since * 1000).toLocaleTimeString() : "?";
          const then = store.retrying ? `retrying, ${store.pending} events kept in memory` : "not writing";
          storeStatus.textContent = `job store failing since ${since}: ${store.error} (${then})`;
        }
      })
      .catch(() => {})
      .finally(() => setTimeout(watchStore, STORE_POLL_MS));
  }

  global.addEventListener("hashchange", route);
  route();
  watchStore();
})(window);
