// Aegis Edge config editor: "Validate" and "Save" send the editor's text to the agent; every
// problem is listed under the editor with its field path and line, and choosing one selects
// that line in the editor. Text is written with textContent only (never as HTML).
"use strict";

(function () {
  // Offsets of 1-based line `n` of `text`.
  function lineRange(text, n) {
    let start = 0;
    for (let i = 1; i < n; i++) {
      const next = text.indexOf("\n", start);
      if (next < 0) return null;
      start = next + 1;
    }
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    return [start, end];
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("config-editor");
    if (!root) return;
    const text = document.getElementById("config-text");
    const result = document.getElementById("config-result");
    const list = document.getElementById("config-problems");

    function select(line) {
      const r = line ? lineRange(text.value, line) : null;
      if (!r) return;
      text.focus();
      text.setSelectionRange(r[0], r[1]);
      // Scroll the line into view: roughly its share of the whole height.
      const lines = text.value.split("\n").length;
      text.scrollTop = Math.max(0, (line - 3) / lines * text.scrollHeight);
    }

    function show(data) {
      list.replaceChildren();
      let message = data.ok ? data.message : data.error;
      if (data.ok && data.changed) {
        message += data.changed.length
          ? " (changes: " + data.changed.join(", ") + ")"
          : " (no change)";
      }
      result.textContent = message || "";
      result.className = data.ok ? "ok" : "error";
      (data.problems || []).forEach(function (p) {
        const li = document.createElement("li");
        const at = document.createElement("button");
        at.type = "button";
        at.className = "path";
        at.textContent = (p.path || "(whole file)") + (p.line ? " — line " + p.line : "");
        at.addEventListener("click", function () { select(p.line); });
        li.appendChild(at);
        li.appendChild(document.createTextNode(" " + p.reason));
        list.appendChild(li);
      });
      if (data.problems && data.problems.length && data.problems[0].line) {
        select(data.problems[0].line);
      }
    }

    async function send(url) {
      const body = JSON.stringify({ text: text.value, base: root.dataset.base });
      try {
        const r = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": root.dataset.csrf },
          body: body,
        });
        let data;
        try {
          data = await r.json();
        } catch (e) {
          data = { ok: false, error: "HTTP " + r.status };
        }
        if (data.ok && data.digest) root.dataset.base = data.digest;
        return data;
      } catch (e) {
        return { ok: false, error: "the agent did not answer: " + e };
      }
    }

    document.getElementById("config-validate").addEventListener("click", async function () {
      result.textContent = "Validating…";
      show(await send("/api/config/validate"));
    });
    document.getElementById("config-save").addEventListener("click", async function () {
      result.textContent = "Saving…";
      show(await send("/api/config"));
    });
  });
})();
