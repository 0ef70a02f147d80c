// chimera serve operator dashboard (docs/chimera-serve.md, "Dashboard").
//
// Everything shown comes from the service's JSON API, called with the bearer token the
// operator pasted: kept in this tab's sessionStorage, sent only to this origin as
// `Authorization: Bearer`, never put in a URL or a cookie. The service's roles decide what
// each call may do; this page shows its answers, refusals included, as they are.
//
// Every value is written as text (text nodes, textContent), never parsed as HTML: device
// ids, groups, reasons, errors and audit details are whatever a device, an uploader or a
// registry file said. Live updates come from the event stream, read with fetch() and a
// stream reader (EventSource cannot send an Authorization header).
"use strict";

(function () {
  const TOKEN_KEY = "chimera-serve.token";
  // Events come in bursts (a step publishes to many devices): one refresh per burst.
  const REFRESH_DEBOUNCE_MS = 250;
  // The stream carries the events of the replica it is connected to only; a slow poll
  // catches what other replicas did.
  const POLL_MS = 30000;
  // The service sends a keep-alive comment every 15 s: silence this long is a dead link.
  const STALL_MS = 45000;
  const RETRY_MS = [1000, 2000, 4000, 8000, 15000];
  // Larger than any event the service sends: a stream that says more is not the service.
  const MAX_EVENT_CHARS = 1 << 20;
  const HOLDING = ["running", "paused", "rolling_back"];
  const ACTIONS = { running: ["pause", "abort"], paused: ["resume", "abort"], rolling_back: ["abort"] };
  const LABEL = { pause: "Pause", resume: "Resume", abort: "Abort" };
  const DONE = { pause: "paused", resume: "resumed", abort: "aborted" };
  // Which views an event can change.
  const AFFECTS = {
    receipt: ["fleet", "rollouts", "rollout"],
    status: ["fleet", "rollout"],
    reconcile: ["fleet", "rollouts", "rollout"],
    rollout: ["fleet", "rollouts", "rollout"],
    rollout_target: ["fleet", "rollouts", "rollout"],
    device: ["fleet", "rollouts", "rollout"],
    lagged: ["fleet", "rollouts", "rollout"],
  };

  const $ = (id) => document.getElementById(id);
  let token = null;
  // Bumped when the token goes: answers to calls made with the old one are dropped.
  let generation = 0;
  // Bumped by every view load: only the newest load renders.
  let loads = 0;
  let stream = null;
  let retries = 0;
  let retryTimer = null;
  let refreshTimer = null;
  let eventsSeen = 0;
  // The rollout whose Abort was clicked once, until when (the second click aborts).
  let armed = { id: null, until: 0 };

  // ---- building elements: text only ----

  // An element whose children are elements or text (strings become text nodes).
  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const k of Object.keys(props || {})) {
      const v = props[k];
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "title") e.title = String(v);
      else if (k === "type") e.type = v;
      else if (k === "href") e.setAttribute("href", v); // only ever "#…" built here
      else if (k === "data") for (const d of Object.keys(v)) e.dataset[d] = String(v[d]);
      else throw new Error("h: unexpected property " + k);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function text(v) {
    return v === null || v === undefined || v === "" ? "—" : String(v);
  }

  function count(v) {
    return typeof v === "number" && isFinite(v) && v > 0 ? v : 0;
  }

  // A value as a class-name suffix: only the service's own words, anything else "other".
  function word(v) {
    return typeof v === "string" && /^[a-z_]{1,32}$/.test(v) ? v : "other";
  }

  function short(v) {
    return typeof v === "string" && v.length > 12 ? v.slice(0, 12) + "…" : text(v);
  }

  function digest(d) {
    return d ? h("div", { class: "mono", title: String(d) }, short(d)) : null;
  }

  function when(ms) {
    if (typeof ms !== "number" || !isFinite(ms) || ms <= 0) return "—";
    const t = new Date(ms);
    return isNaN(t.getTime()) ? "—" : t.toISOString().replace("T", " ").slice(0, 19) + "Z";
  }

  function ago(ms) {
    if (typeof ms !== "number" || !isFinite(ms) || ms <= 0) return "";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }

  function notice(message, isError) {
    const n = $("notice");
    n.textContent = message || "";
    n.className = isError ? "error" : "";
    n.hidden = !message;
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, message, check) {
      super(message);
      this.status = status;
      this.check = check || null;
    }
  }

  const SIGNED_OUT = -1;

  function headers(accept) {
    return { Authorization: "Bearer " + token, Accept: accept };
  }

  // `method path` with the token: the JSON answer, or an ApiError with the service's
  // message. A 401 means the token is no good any more: back to the sign-in form.
  async function api(method, path) {
    const mine = generation;
    let r;
    try {
      r = await fetch(path, {
        method: method,
        headers: headers("application/json"),
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
      });
    } catch (e) {
      throw new ApiError(0, "the service did not answer");
    }
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    if (mine !== generation) throw new ApiError(SIGNED_OUT, "signed out");
    if (!r.ok) {
      const message = body && typeof body.error === "string" ? body.error : "HTTP " + r.status;
      const e = new ApiError(r.status, message, body && typeof body.check === "string" ? body.check : null);
      if (r.status === 401) signOut("The service refused the token: " + message);
      throw e;
    }
    return body;
  }

  function refusal(e, what) {
    if (e.status === 403) return what + ": refused (403 Forbidden): " + e.message;
    if (e.status > 0) return what + ": failed (" + e.status + "): " + e.message;
    return what + ": failed: " + e.message;
  }

  // ---- views ----

  const VIEWS = { fleet: loadFleet, rollouts: loadRollouts, rollout: loadRollout, audit: loadAudit };

  // The view the address names: #fleet (default), #rollouts, #rollout/ID, #audit.
  function route() {
    const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
    if (name === "rollout" && rest.length) {
      try {
        return { name: name, id: decodeURIComponent(rest.join("/")) };
      } catch (e) {
        return { name: "rollouts" };
      }
    }
    return { name: name in VIEWS && name !== "rollout" ? name : "fleet" };
  }

  function showView(name) {
    for (const v of Object.keys(VIEWS)) $("view-" + v).hidden = !token || v !== name;
    for (const a of document.querySelectorAll("#tabs a")) {
      const here = a.dataset.view === (name === "rollout" ? "rollouts" : name);
      if (here) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  async function refresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
    if (!token) return;
    const r = route();
    showView(r.name);
    try {
      await VIEWS[r.name](r);
    } catch (e) {
      if (e.status !== SIGNED_OUT && e.status !== 401) notice(refusal(e, "Loading " + r.name), true);
    }
  }

  function soon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, REFRESH_DEBOUNCE_MS);
  }

  async function loadFleet() {
    const mine = ++loads;
    const devices = await api("GET", "api/v1/devices");
    if (mine !== loads) return;
    if (!Array.isArray(devices)) throw new ApiError(0, "the device list is not a list");
    $("fleet-table").tBodies[0].replaceChildren(...devices.map(deviceRow));
    const online = devices.filter((d) => d.status && d.status.online === true).length;
    const behind = devices.filter(
      (d) => d.desired && !(d.status && d.status.running_digest === d.desired.digest)
    ).length;
    $("fleet-summary").textContent =
      devices.length + " device(s), " + online + " online, " + behind +
      " not running the document they should run (yet).";
  }

  function deviceRow(d) {
    const s = d.status || null;
    const online = s
      ? h("span", { class: s.online ? "online" : "offline", title: "status at " + when(s.status_at) },
          s.online ? "online" : "offline")
      : h("span", { class: "muted" }, "no status yet");
    const running = s && (s.running_id || s.running_digest)
      ? [h("div", null, text(s.running_id)), digest(s.running_digest)]
      : "—";
    let desired = "—";
    if (d.desired) {
      const inSync = s && s.running_digest === d.desired.digest;
      desired = [
        digest(d.desired.digest),
        h("div", { class: "muted" }, d.desired.rollout ? "rollout " + short(d.desired.rollout) : "published"),
        h("div", { class: inSync ? "online" : "muted" }, inSync ? "running it" : "not running it"),
      ];
    }
    return h("tr", null,
      h("td", { class: "mono" }, text(d.id)),
      h("td", null, Array.isArray(d.groups) && d.groups.length ? d.groups.join(", ") : "—"),
      h("td", null, online, s ? h("div", { class: "muted" }, "seen " + ago(s.last_seen)) : null),
      h("td", null, text(s && s.agent_version)),
      h("td", null, text(s && s.trust_version)),
      h("td", null, running),
      h("td", null, desired),
      h("td", null, receipt(d.last_receipt)));
  }

  function receipt(r) {
    if (!r) return "—";
    if (!r.verified) {
      return [h("span", { class: "unverified" }, "unverified"), h("div", null, text(r.error)),
        h("div", { class: "muted" }, when(r.received_at))];
    }
    return [h("span", { class: "verdict-" + word(r.verdict) }, text(r.verdict)),
      r.kind === "trust" ? " (trust)" : null,
      h("div", null, text(r.workflow_id)), digest(r.digest),
      h("div", { class: "muted" }, when(r.received_at))];
  }

  async function loadRollouts() {
    const mine = ++loads;
    const list = await api("GET", "api/v1/rollouts?limit=100");
    if (mine !== loads) return;
    if (!Array.isArray(list)) throw new ApiError(0, "the rollout list is not a list");
    $("rollouts-table").tBodies[0].replaceChildren(...list.map(rolloutRow));
    const active = list.filter((r) => HOLDING.includes(r.state)).length;
    $("rollouts-summary").textContent = list.length
      ? list.length + " rollout(s), " + active + " in progress."
      : "No rollouts yet.";
  }

  function totals(progress) {
    const t = { devices: 0, applied: 0, negative: 0, missing: 0, offline: 0, published: 0, pending: 0 };
    for (const p of Array.isArray(progress) ? progress : []) for (const k of Object.keys(t)) t[k] += count(p[k]);
    return t;
  }

  function audience(a) {
    if (!a) return "—";
    if (typeof a.group === "string") return "group " + a.group;
    if (Array.isArray(a.devices)) return a.devices.length + " device(s): " + a.devices.join(", ");
    return "—";
  }

  function stateCell(r) {
    const steps = Array.isArray(r.steps) ? r.steps.length : 0;
    return [h("span", { class: "state-" + word(r.state) }, text(r.state)),
      h("div", { class: "muted" }, "step " + (count(r.step) + 1) + " of " + steps),
      r.reason ? h("div", null, String(r.reason)) : null];
  }

  function failures(r) {
    const t = totals(r.progress);
    const b = r.budget || {};
    return [h("div", null, t.negative + " negative (budget " + text(b.max_negative) + ")"),
      h("div", null, t.missing + " missing (budget " + text(b.max_missing) + ")"),
      b.max_failure_percent !== null && b.max_failure_percent !== undefined
        ? h("div", null, "at most " + b.max_failure_percent + " % failed") : null];
  }

  function stepBars(r) {
    const progress = Array.isArray(r.progress) ? r.progress : [];
    return progress.map((p, i) => {
      const bar = h("div", { class: "bar" });
      for (const k of ["applied", "negative", "missing", "offline", "published", "pending", "unenrolled"]) {
        if (!count(p[k])) continue;
        const seg = h("span", { class: "seg-" + k, title: count(p[k]) + " " + k });
        seg.style.flexGrow = String(count(p[k])); // CSSOM: allowed by style-src 'self'
        bar.appendChild(seg);
      }
      const more = ["published", "negative", "missing", "offline", "pending", "unenrolled", "rollback_sent"]
        .filter((k) => count(p[k]))
        .map((k) => count(p[k]) + " " + k.replace("_", " "));
      const label = "step " + (i + 1) + " (" + text(p.percent) + " %): " + count(p.applied) + "/" +
        count(p.devices) + " applied" + (more.length ? ", " + more.join(", ") : "");
      return h("div", { class: "step", data: { step: i } }, bar, h("div", { class: "step-label" }, label));
    });
  }

  function actions(r) {
    const verbs = ACTIONS[r.state] || [];
    if (!verbs.length) return h("span", { class: "muted" }, "—");
    return h("div", { class: "actions" }, verbs.map((v) => actionButton(r.id, v)));
  }

  // Pause, resume, abort: shown by the rollout's state; the service decides by role.
  function actionButton(id, verb) {
    const confirming = () => verb === "abort" && armed.id === id && Date.now() < armed.until;
    const b = h("button", { type: "button", class: verb === "abort" ? "danger" : null, data: { action: verb } },
      confirming() ? "Confirm abort" : LABEL[verb]);
    b.addEventListener("click", async () => {
      // Aborting is for good (no rollback): it takes a second click.
      if (verb === "abort" && !confirming()) {
        armed = { id: id, until: Date.now() + 5000 };
        b.textContent = "Confirm abort";
        return;
      }
      armed = { id: null, until: 0 };
      b.disabled = true;
      try {
        await api("POST", "api/v1/rollouts/" + encodeURIComponent(id) + "/" + verb);
        notice("Rollout " + short(id) + " " + DONE[verb] + ".", false);
      } catch (e) {
        if (e.status !== SIGNED_OUT && e.status !== 401) notice(refusal(e, LABEL[verb] + " rollout " + short(id)), true);
      } finally {
        b.disabled = false;
        soon();
      }
    });
    return b;
  }

  function rolloutRow(r) {
    return h("tr", { data: { rollout: r.id } },
      h("td", null, h("a", { href: "#rollout/" + encodeURIComponent(String(r.id)), class: "mono" }, short(r.id))),
      h("td", null, h("div", null, text(r.workflow_id)), digest(r.workflow)),
      h("td", null, audience(r.audience)),
      h("td", null, stateCell(r)),
      h("td", null, stepBars(r)),
      h("td", null, failures(r)),
      h("td", null, h("div", null, text(r.created_by)), h("div", { class: "muted" }, when(r.created_at))),
      h("td", null, actions(r)));
  }

  async function loadRollout(where) {
    const mine = ++loads;
    const d = await api("GET", "api/v1/rollouts/" + encodeURIComponent(where.id));
    if (mine !== loads) return;
    $("rollout-id").textContent = text(d.id);
    const b = d.budget || {};
    const fact = (name, ...value) => [h("dt", null, name), h("dd", null, value)];
    $("rollout-facts").replaceChildren(...[
      fact("Workflow", text(d.workflow_id), " ", digest(d.workflow)),
      fact("Audience", audience(d.audience)),
      fact("State", stateCell(d)),
      fact("Budget", "negative " + text(b.max_negative) + ", missing " + text(b.max_missing) +
        (b.max_failure_percent !== null && b.max_failure_percent !== undefined ? ", " + b.max_failure_percent + " %" : "")),
      fact("Answer timeout", typeof d.answer_timeout_ms === "number" ? d.answer_timeout_ms / 1000 + " s" : "—"),
      fact("On failure", d.rollback ? ["roll back to ", digest(d.rollback)] : "halt (no rollback document)"),
      fact("Created", text(d.created_by), " at ", when(d.created_at)),
      fact("Updated", when(d.updated_at)),
      fact("Engine", d.claimed_by ? text(d.claimed_by) + " (lease until " + when(d.lease_until) + ")" : "—"),
    ].flat());
    $("rollout-actions").replaceChildren(...(ACTIONS[d.state] ? [actions(d)] : []));
    $("rollout-steps").replaceChildren(...stepBars(d));
    const targets = Array.isArray(d.targets) ? d.targets : [];
    $("targets-table").tBodies[0].replaceChildren(...targets.map((t) => h("tr", null,
      h("td", { class: "mono" }, text(t.device)),
      h("td", null, count(t.step) + 1),
      h("td", null, h("span", { class: "state-" + word(t.state) }, text(t.state))),
      h("td", null, count(t.sends)),
      h("td", null, t.verdict ? [h("span", { class: "verdict-" + word(t.verdict) }, String(t.verdict)),
        h("div", { class: "muted" }, when(t.answered_at))] : "—"),
      h("td", null, text(t.reason)),
      h("td", null, t.rollback_verdict ? String(t.rollback_verdict)
        : t.rollback_sent_at ? "sent " + when(t.rollback_sent_at) : "—"),
      h("td", null, t.online === true ? "online" : t.online === false ? "offline" : "—"),
      h("td", null, when(t.last_seen)))));
  }

  async function loadAudit() {
    const mine = ++loads;
    const denied = $("audit-denied");
    let rows;
    try {
      rows = await api("GET", "api/v1/audit?limit=200");
    } catch (e) {
      if (e.status !== 403) throw e;
      if (mine !== loads) return;
      denied.textContent = "The audit log needs an admin token. The service said: " + e.message;
      denied.hidden = false;
      $("audit-table").hidden = true;
      return;
    }
    if (mine !== loads) return;
    if (!Array.isArray(rows)) throw new ApiError(0, "the audit log is not a list");
    denied.hidden = true;
    $("audit-table").hidden = false;
    $("audit-table").tBodies[0].replaceChildren(...rows.map((a) => h("tr", null,
      h("td", null, when(a.at)), h("td", null, text(a.actor)),
      h("td", null, text(a.action)), h("td", null, text(a.detail)))));
  }

  // ---- the event stream ----

  function setLive(kind, message) {
    const e = $("live");
    e.className = "live " + kind;
    e.textContent = message;
  }

  function disconnect() {
    const s = stream;
    stream = null;
    if (s) s.abort();
    clearTimeout(retryTimer);
    retryTimer = null;
    setLive("off", "disconnected");
  }

  // Opens GET /api/v1/events with the token and reads it until it ends, fails or stalls;
  // then tries again later (1 s, 2 s, … 15 s apart) until it is told the token is no good.
  async function connect() {
    disconnect();
    const mine = generation;
    const ctrl = new AbortController();
    stream = ctrl;
    setLive("wait", "connecting…");
    let why = "the stream ended";
    try {
      const r = await fetch("api/v1/events", {
        headers: headers("text/event-stream"),
        credentials: "omit",
        cache: "no-store",
        signal: ctrl.signal,
      });
      if (stream !== ctrl) return; // signed out or replaced while it was opening
      if (r.status === 401 || r.status === 403) {
        let message = "HTTP " + r.status;
        try {
          message = (await r.json()).error || message;
        } catch (e) {
          // keep the status
        }
        if (stream !== ctrl) return;
        stream = null;
        if (r.status === 401) signOut("The service refused the token: " + message);
        else setLive("off", "disconnected: events refused (" + r.status + "): " + message);
        return;
      }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      retries = 0;
      setLive("on", "live");
      soon(); // what happened while the stream was down
      await readEvents(r.body, ctrl);
    } catch (e) {
      why = ctrl.signal.aborted ? "the stream went silent" : "the service did not answer";
    }
    if (stream !== ctrl || mine !== generation) return; // replaced, or signed out
    stream = null;
    const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
    retries += 1;
    setLive("off", "disconnected (" + why + "), retrying in " + Math.round(wait / 1000) + " s");
    retryTimer = setTimeout(connect, wait);
  }

  // Server-sent events: `event:` and `data:` lines, a blank line ends an event, lines
  // starting with `:` are comments (the keep-alive).
  async function readEvents(body, ctrl) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let last = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - last > STALL_MS) ctrl.abort();
    }, 5000);
    let buf = "";
    let type = "";
    let data = [];
    let size = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        last = Date.now();
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (data.length) dispatch(type || "message", data.join("\n"));
            type = "";
            data = [];
            size = 0;
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? "" : line.slice(colon + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") type = v;
          else if (field === "data") {
            data.push(v);
            size += v.length;
          }
        }
        if (buf.length + size > MAX_EVENT_CHARS) throw new Error("an event of more than " + MAX_EVENT_CHARS + " characters");
      }
    } finally {
      clearInterval(watchdog);
      reader.cancel().catch(() => {});
    }
  }

  function dispatch(type, data) {
    try {
      JSON.parse(data);
    } catch (e) {
      return; // not one of the service's events
    }
    eventsSeen += 1;
    const live = $("live");
    live.dataset.events = String(eventsSeen);
    live.title = "The event stream: " + eventsSeen + " event(s), the last a " + type + " at " + when(Date.now());
    const r = route().name;
    if ((AFFECTS[type] || []).includes(r) || r === "audit") soon();
  }

  // ---- signing in and out ----

  function signIn(t) {
    generation += 1;
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    $("signin").hidden = true;
    $("signin-error").textContent = "";
    $("tabs").hidden = false;
    $("forget").hidden = false;
    notice(null);
    connect();
    refresh();
  }

  // Forgets the token and everything it showed (the next token may see less).
  function signOut(message) {
    generation += 1;
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    disconnect();
    for (const t of document.querySelectorAll("table.grid tbody")) t.replaceChildren();
    for (const id of ["fleet-summary", "rollouts-summary", "rollout-id", "audit-denied"]) $(id).textContent = "";
    for (const id of ["rollout-facts", "rollout-actions", "rollout-steps"]) $(id).replaceChildren();
    showView(null);
    notice(null);
    $("tabs").hidden = true;
    $("forget").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("token");
      const t = input.value.trim();
      input.value = "";
      // A bearer value is printable ASCII; anything else cannot go in a header.
      if (!/^[\x21-\x7e]{1,16384}$/.test(t)) {
        $("signin-error").textContent = "A token is printable ASCII without spaces.";
        return;
      }
      signIn(t);
    });
    $("forget").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", () => {
      notice(null);
      refresh();
    });
    setInterval(() => {
      if (token && document.visibilityState === "visible") refresh();
    }, POLL_MS);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else signOut("");
  });
})();
