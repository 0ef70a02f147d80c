// Aegis Edge technician page: refreshes the page's live values every 2 s.
// Values are written with textContent only (never as HTML).
"use strict";

(function () {
  const PERIOD_MS = 2000;

  function lookup(obj, path) {
    return path.split(".").reduce(function (o, k) {
      return o === null || o === undefined ? undefined : o[k];
    }, obj);
  }

  function show(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  async function refresh(api) {
    try {
      const r = await fetch(api, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      document.querySelectorAll("[data-key]").forEach(function (el) {
        el.textContent = show(lookup(data, el.dataset.key));
      });
      // A page's own script (sensors.js) redraws from the same data.
      document.dispatchEvent(new CustomEvent("aegis:data", { detail: data }));
    } catch (e) {
      // Offline for a moment: keep the last values.
    }
  }

  async function tail(pre) {
    try {
      const url = pre.dataset.tail + "&after=" + encodeURIComponent(pre.dataset.after || "0");
      const r = await fetch(url, { credentials: "same-origin" });
      if (!r.ok) return;
      const data = await r.json();
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      data.lines.forEach(function (l) {
        const d = new Date(l.ts_us / 1000).toISOString();
        pre.appendChild(document.createTextNode(d + " " + l.level + " " + l.target + ": " + l.text + "\n"));
      });
      if (data.last !== null) pre.dataset.after = String(data.last);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } catch (e) {
      // Keep trying.
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const api = document.body.dataset.api;
    if (api) setInterval(function () { refresh(api); }, PERIOD_MS);
    const pre = document.getElementById("log");
    if (pre) setInterval(function () { tail(pre); }, PERIOD_MS);
  });
})();
