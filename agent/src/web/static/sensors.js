// Aegis Edge sensors page: plots the recent fused positions (a line per track) and the
// device's own GPS trail on a local plane around their centre, with a scale bar. Nothing
// leaves the device: no map tiles, no request but the page's own JSON. Text is drawn with
// fillText or set with textContent, never as HTML.
"use strict";

(function () {
  const EARTH_M = 6371008.8; // mean Earth radius
  const COLOURS = 10; // .c0 … .c9 in app.css, and PALETTE here
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
    "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"];
  const MIN_SPAN_M = 20; // a single point is not drawn at infinite zoom

  function finite(x) { return typeof x === "number" && isFinite(x); }
  function valid(p) {
    return p && finite(p.lat) && finite(p.lon) && Math.abs(p.lat) <= 90 && Math.abs(p.lon) <= 180;
  }
  // Degrees of longitude into [-180, 180).
  function wrap(d) { return ((d + 540) % 360) - 180; }

  // Equirectangular projection around the points' centroid: metres east and north. Within
  // a fraction of a percent over the few kilometres a device's recent positions span.
  function projector(points) {
    const ref = points[0].lon;
    let lat0 = 0, dlon = 0;
    points.forEach(function (p) { lat0 += p.lat; dlon += wrap(p.lon - ref); });
    lat0 /= points.length;
    const lon0 = ref + dlon / points.length;
    const k = Math.PI / 180 * EARTH_M;
    const c = Math.cos(lat0 * Math.PI / 180);
    return function (p) { return [wrap(p.lon - lon0) * c * k, (p.lat - lat0) * k]; };
  }

  // The longest 1, 2 or 5 × 10^n metres not above `m`.
  function niceLength(m) {
    const p = Math.pow(10, Math.floor(Math.log10(m)));
    return [5, 2, 1].map(function (f) { return f * p; }).find(function (x) { return x <= m; }) || p;
  }

  function distance(m) { return m >= 1000 ? (m / 1000) + " km" : m + " m"; }

  // Fused records grouped by track (stream and track id), each oldest first; the rest apart.
  function tracks(fused) {
    const byKey = new Map();
    const loose = [];
    fused.filter(valid).forEach(function (r) {
      if (r.track_id === null || r.track_id === undefined) { loose.push(r); return; }
      const key = String(r.stream) + "#" + String(r.track_id);
      if (!byKey.has(key)) byKey.set(key, { key: key, stream: r.stream, id: r.track_id, label: r.label, points: [] });
      const t = byKey.get(key);
      if (r.label) t.label = r.label;
      t.points.push(r);
    });
    const list = Array.from(byKey.values()).sort(function (a, b) { return a.key < b.key ? -1 : 1; });
    list.forEach(function (t) { t.points.sort(function (a, b) { return a.ts_us - b.ts_us; }); });
    return { list: list, loose: loose };
  }

  function draw(canvas, data) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (w === 0 || h === 0) return;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const note = document.getElementById("sensor-map-note");
    const legend = document.getElementById("sensor-map-legend");
    const trail = (data.trail || []).filter(valid);
    const t = tracks(data.fused || []);
    const all = trail.concat(t.loose);
    t.list.forEach(function (tr) { Array.prototype.push.apply(all, tr.points); });
    if (data.gps && valid(data.gps)) all.push(data.gps);
    legend.replaceChildren();
    if (all.length === 0) {
      note.textContent = "No position to plot yet.";
      return;
    }
    const project = projector(all);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    all.forEach(function (p) {
      const q = project(p);
      x0 = Math.min(x0, q[0]); x1 = Math.max(x1, q[0]);
      y0 = Math.min(y0, q[1]); y1 = Math.max(y1, q[1]);
    });
    const pad = 28;
    const spanX = Math.max(x1 - x0, MIN_SPAN_M), spanY = Math.max(y1 - y0, MIN_SPAN_M);
    const scale = Math.min(Math.max(w - 2 * pad, 10) / spanX, Math.max(h - 2 * pad, 10) / spanY); // px per metre
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    function px(p) {
      const q = project(p);
      return [w / 2 + (q[0] - cx) * scale, h / 2 - (q[1] - cy) * scale];
    }
    function line(points, colour, width) {
      if (points.length < 2) return;
      ctx.strokeStyle = colour;
      ctx.lineWidth = width;
      ctx.beginPath();
      points.forEach(function (p, i) {
        const q = px(p);
        if (i === 0) ctx.moveTo(q[0], q[1]); else ctx.lineTo(q[0], q[1]);
      });
      ctx.stroke();
    }
    function dot(p, colour, r, filled) {
      const q = px(p);
      ctx.beginPath();
      ctx.arc(q[0], q[1], r, 0, 2 * Math.PI);
      if (filled) { ctx.fillStyle = colour; ctx.fill(); } else { ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.stroke(); }
    }
    ctx.font = "12px system-ui, sans-serif";
    // The device's own trail and where it is now.
    line(trail, "#555", 2);
    const here = data.gps && valid(data.gps) ? data.gps : trail[trail.length - 1];
    if (here) {
      dot(here, "#111", 5, true);
      const q = px(here);
      ctx.fillStyle = "#111";
      ctx.fillText("device", q[0] + 7, q[1] - 7);
    }
    // Events without a track (moderation, rules): hollow dots.
    t.loose.forEach(function (p) { dot(p, "#4a6a8a", 3, false); });
    t.list.forEach(function (tr, i) {
      const colour = PALETTE[i % COLOURS];
      line(tr.points, colour, 2);
      tr.points.forEach(function (p) { dot(p, colour, 3, true); });
      const last = px(tr.points[tr.points.length - 1]);
      const name = (tr.label || "track") + " #" + tr.id;
      ctx.fillStyle = colour;
      ctx.fillText(name, last[0] + 5, last[1] + 14);
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch c" + (i % COLOURS);
      li.appendChild(sw);
      li.appendChild(document.createTextNode(name + " (" + (tr.stream || "—") + ", " + tr.points.length + " positions)"));
      legend.appendChild(li);
    });
    // Scale bar (bottom left) and north (top right).
    const bar = niceLength((w / 4) / scale);
    const barPx = bar * scale;
    ctx.strokeStyle = "#111";
    ctx.fillStyle = "#111";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(pad, h - 12); ctx.lineTo(pad + barPx, h - 12);
    ctx.moveTo(pad, h - 17); ctx.lineTo(pad, h - 7);
    ctx.moveTo(pad + barPx, h - 17); ctx.lineTo(pad + barPx, h - 7);
    ctx.stroke();
    ctx.fillText(distance(bar), pad + barPx + 6, h - 8);
    ctx.fillText("N ↑", w - 34, 18);
    note.textContent = t.list.length + " tracks, " +
      (t.list.reduce(function (n, tr) { return n + tr.points.length; }, 0) + t.loose.length) +
      " fused positions, " + trail.length + " GPS fixes of the device; " +
      Math.round(x1 - x0) + " m × " + Math.round(y1 - y0) + " m.";
  }

  document.addEventListener("DOMContentLoaded", function () {
    const canvas = document.getElementById("sensor-map");
    const api = document.body.dataset.api;
    if (!canvas || !api || !canvas.getContext) return;
    let last = null;
    function redraw(data) { last = data; draw(canvas, data); }
    // app.js refreshes the page's JSON every 2 s and hands it over; this is the first draw.
    document.addEventListener("aegis:data", function (e) { redraw(e.detail); });
    window.addEventListener("resize", function () { if (last) draw(canvas, last); });
    fetch(api, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d) redraw(d); })
      .catch(function () { /* the next refresh tries again */ });
  });
})();
