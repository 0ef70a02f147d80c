// Aegis Edge live view: fMP4 over a WebSocket into Media Source Extensions
// (ManagedMediaSource on iOS), JPEG frames where MSE or the codec is missing, and overlays
// drawn on a canvas from the per-frame metadata the socket sends beside the video. Where the
// stream has a webrtc sink, WebRTC (WHEP) too: the lowest latency, without overlays.
// Text from the device (labels) is drawn with fillText only, never inserted as HTML.
"use strict";

(function () {
  const root = document.getElementById("live");
  if (!root) return;
  const stream = root.dataset.stream;
  const video = document.getElementById("live-video");
  const img = document.getElementById("live-jpeg");
  const canvas = document.getElementById("live-overlay");
  const ctx = canvas.getContext("2d");
  const modeSel = document.getElementById("live-mode");
  const el = function (id) { return document.getElementById(id); };
  const MS = window.ManagedMediaSource || window.MediaSource;
  const TICKS = 90000; // the video's timescale
  const MAX_LAG_S = 0.3; // further behind the live edge than this: jump to it

  // Numbers for the technician (and the browser test): mode, frames shown, latency.
  const stats = { mode: "", frames: 0, latencyMs: null, bytes: 0, dropped: 0, inits: 0 };
  window.aegisLive = stats;

  let ws = null;
  let ms = null;
  let sb = null;
  let queue = [];
  let codec = null;
  let gen = null;
  let jpegOn = false;
  let metas = [];
  let retry = null;
  let whep = null;

  function setMode(m) {
    stats.mode = m;
    el("live-modeshown").textContent = m;
    video.hidden = m === "jpeg";
    img.hidden = m !== "jpeg";
  }

  function stop() {
    if (retry) { clearTimeout(retry); retry = null; }
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    jpegOn = false;
    resetMse();
    stopWhep();
  }

  function stopWhep() {
    if (!whep) return;
    whep.pc.close();
    if (whep.location) {
      fetch(whep.location, { method: "DELETE", credentials: "same-origin",
        headers: { "X-CSRF-Token": root.dataset.csrf } }).catch(function () { /* gone */ });
    }
    whep = null;
    video.srcObject = null;
  }

  // WHEP: a receive-only peer connection; the offer goes to the device, the answer back.
  async function startWhep() {
    setMode("webrtc");
    const pc = new RTCPeerConnection();
    const mine = { pc: pc, location: null };
    whep = mine;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = function (ev) {
      video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      video.play().catch(function () { /* muted: autoplay allowed */ });
    };
    pc.onconnectionstatechange = function () {
      stats.webrtc = pc.connectionState;
      if (whep === mine && (pc.connectionState === "failed" || pc.connectionState === "closed")) {
        stopWhep();
        retry = setTimeout(start, 1000);
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const r = await fetch("/whep/" + encodeURIComponent(stream), {
        method: "POST", credentials: "same-origin", body: pc.localDescription.sdp,
        headers: { "Content-Type": "application/sdp", "X-CSRF-Token": root.dataset.csrf } });
      const text = await r.text();
      if (r.status !== 201) throw new Error(text);
      mine.location = r.headers.get("Location");
      await pc.setRemoteDescription({ type: "answer", sdp: text });
    } catch (e) {
      stats.error = String(e.message || e);
      el("live-modeshown").textContent = "webrtc: " + stats.error;
    }
  }

  function resetMse() {
    sb = null;
    queue = [];
    codec = null;
    if (ms) {
      try { if (video.src) URL.revokeObjectURL(video.src); } catch (e) { /* ignore */ }
      video.removeAttribute("src");
      video.srcObject = null;
      ms = null;
    }
  }

  function start() {
    stop();
    if (modeSel.value === "webrtc") { startWhep(); return; }
    if (modeSel.value === "jpeg" || !MS) { startJpeg(); return; }
    startSocket();
  }

  function startSocket() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + "/api/live/" +
      encodeURIComponent(stream) + "/ws");
    ws.binaryType = "arraybuffer";
    ws.onmessage = function (ev) {
      if (typeof ev.data === "string") { onText(JSON.parse(ev.data)); return; }
      stats.bytes += ev.data.byteLength;
      queue.push(ev.data);
      pump();
    };
    ws.onclose = function () { ws = null; retry = setTimeout(start, 1000); };
  }

  function onText(m) {
    if (m.type === "init") { onInit(m); return; }
    if (m.type === "stats") { stats.dropped = m.dropped; el("live-dropped").textContent = String(m.dropped); return; }
    metas.push(m);
    if (metas.length > 600) metas = metas.slice(-300);
  }

  function onInit(m) {
    stats.inits++;
    const mime = "video/mp4; codecs=\"" + m.codec + "\"";
    if (!MS.isTypeSupported(mime)) {
      if (modeSel.value === "auto") { stop(); startJpeg(); }
      return;
    }
    // The same stream resynchronising (a keyframe after a drop): its init segment is simply
    // appended. A new encoder (restart, new size, timestamps jumped): a fresh MediaSource.
    if (ms && codec === m.codec && gen === m.gen) { return; }
    resetMse();
    codec = m.codec;
    gen = m.gen;
    metas = [];
    ms = new MS();
    video.disableRemotePlayback = true;
    if (window.ManagedMediaSource && MS === window.ManagedMediaSource) {
      video.srcObject = ms;
    } else {
      video.src = URL.createObjectURL(ms);
    }
    const mine = ms;
    ms.addEventListener("sourceopen", function () {
      if (ms !== mine) return;
      sb = ms.addSourceBuffer(mime);
      sb.mode = "segments";
      sb.addEventListener("updateend", function () { chase(); pump(); });
      pump();
    }, { once: true });
    setMode("mse");
  }

  function pump() {
    if (!sb || sb.updating || queue.length === 0) return;
    try {
      sb.appendBuffer(queue.shift());
    } catch (e) {
      // The buffer is full or the source closed: start over from the next init.
      start();
    }
  }

  // Stay at the live edge, and keep about ten seconds of buffer.
  function chase() {
    if (!sb || sb.updating || video.buffered.length === 0) return;
    const last = video.buffered.length - 1;
    const end = video.buffered.end(last);
    const begin = video.buffered.start(last);
    const lag = end - video.currentTime;
    if (video.currentTime < begin || lag > MAX_LAG_S) {
      video.currentTime = Math.max(begin, end - 0.05);
    }
    // Between jumps, play a little faster while behind: the player's own buffering then
    // does not settle a few frames late.
    video.playbackRate = lag > 0.1 ? 1.1 : 1.0;
    if (video.paused) video.play().catch(function () { /* autoplay needs muted: it is */ });
    const first = video.buffered.start(0);
    if (video.currentTime - first > 20) sb.remove(first, video.currentTime - 10);
  }

  function nearestMeta(t) {
    let best = null;
    let bd = Infinity;
    for (let i = metas.length - 1; i >= 0; i--) {
      const d = Math.abs(metas[i].t - t);
      if (d < bd) { bd = d; best = metas[i]; }
      if (metas[i].t < t - TICKS) break;
    }
    return bd <= TICKS / 10 ? best : null;
  }

  function draw(meta, srcW, srcH) {
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    el("live-objects").textContent = meta ? String(meta.o.length) : "—";
    if (!meta || !srcW || !srcH) return;
    // The picture is letterboxed (object-fit: contain) inside the element.
    const s = Math.min(w / srcW, h / srcH);
    const ox = (w - srcW * s) / 2;
    const oy = (h - srcH * s) / 2;
    const sx = s * srcW / meta.w;
    const sy = s * srcH / meta.h;
    const showBoxes = el("ov-boxes").checked;
    const showIds = el("ov-ids").checked;
    const showMod = el("ov-moderation").checked;
    ctx.lineWidth = 2;
    ctx.font = "13px sans-serif";
    meta.o.forEach(function (o) {
      const moderated = o[6] === "m";
      if (moderated ? !showMod : !showBoxes) return;
      const x = ox + o[0] * sx;
      const y = oy + o[1] * sy;
      const bw = (o[2] - o[0]) * sx;
      const bh = (o[3] - o[1]) * sy;
      ctx.strokeStyle = moderated ? "#e5484d" : "#3fb950";
      ctx.strokeRect(x, y, bw, bh);
      if (showIds && !moderated) {
        const label = String(o[5]) + (o[4] === null ? "" : " #" + o[4]);
        ctx.fillStyle = "rgba(0,0,0,0.6)";
        ctx.fillRect(x, y - 16, ctx.measureText(label).width + 6, 16);
        ctx.fillStyle = "#fff";
        ctx.fillText(label, x + 3, y - 4);
      }
    });
  }

  function presented(meta) {
    stats.frames++;
    if (meta && typeof meta.c === "number") {
      stats.latencyMs = Date.now() - meta.c;
      el("live-latency").textContent = stats.latencyMs + " ms";
    }
  }

  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = function (now, md) {
      const meta = nearestMeta(Math.round(md.mediaTime * TICKS));
      presented(meta);
      draw(meta, md.width, md.height);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    let lastTime = -1;
    const onAnim = function () {
      if (stats.mode === "mse" && video.currentTime !== lastTime) {
        lastTime = video.currentTime;
        const meta = nearestMeta(Math.round(video.currentTime * TICKS));
        presented(meta);
        draw(meta, video.videoWidth, video.videoHeight);
      }
      requestAnimationFrame(onAnim);
    };
    requestAnimationFrame(onAnim);
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  // JPEG fallback: the next frame, as fast as it arrives, at most 10 per second. No
  // overlays here (no metadata beside a JPEG).
  async function startJpeg() {
    setMode("jpeg");
    jpegOn = true;
    let shown = null;
    while (jpegOn) {
      const t0 = performance.now();
      try {
        const r = await fetch("/api/live/" + encodeURIComponent(stream) + "/frame.jpg",
          { credentials: "same-origin", cache: "no-store" });
        if (!r.ok) { await sleep(1000); continue; }
        const blob = await r.blob();
        stats.bytes += blob.size;
        const url = URL.createObjectURL(blob);
        await new Promise(function (res) { img.onload = res; img.onerror = res; img.src = url; });
        if (shown) URL.revokeObjectURL(shown);
        shown = url;
        stats.frames++;
        draw(null, 0, 0);
      } catch (e) {
        await sleep(1000);
      }
      const dt = performance.now() - t0;
      if (dt < 100) await sleep(100 - dt);
    }
  }

  let lastBytes = 0;
  setInterval(function () {
    el("live-rate").textContent = Math.round((stats.bytes - lastBytes) * 8 / 1000) + " kbit/s";
    lastBytes = stats.bytes;
  }, 1000);

  modeSel.addEventListener("change", start);
  document.addEventListener("visibilitychange", function () {
    // A hidden tab costs the device nothing: leave, and come back at the live edge.
    if (document.hidden) stop(); else start();
  });
  start();
})();
