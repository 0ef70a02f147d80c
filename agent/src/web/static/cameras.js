// Aegis Edge cameras page: the camera forms are sent with fetch; a refused change shows each
// problem next to its field, a saved one reloads the page (the new sources) and says what
// happened. Text is written with textContent only (never as HTML).
"use strict";

(function () {
  const KEY = "aegis.cameras.message";

  function note(where, text, cls) {
    const p = document.createElement("p");
    p.className = cls;
    p.setAttribute("role", "status");
    p.textContent = text;
    where.prepend(p);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const main = document.querySelector("main");
    const saved = window.sessionStorage.getItem(KEY);
    if (saved && main) {
      window.sessionStorage.removeItem(KEY);
      note(main, saved, "ok");
    }
    document.querySelectorAll("form.camera-form").forEach(function (form) {
      form.addEventListener("submit", async function (ev) {
        ev.preventDefault();
        if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
        const out = form.querySelector(".form-result");
        form.querySelectorAll(".field-error").forEach(function (e) { e.remove(); });
        out.textContent = "Saving…";
        out.className = "form-result";
        const csrf = form.querySelector("input[name=csrf]").value;
        let data;
        try {
          const r = await fetch(form.action, {
            method: "POST",
            credentials: "same-origin",
            headers: { "X-CSRF-Token": csrf },
            body: new URLSearchParams(new FormData(form)),
          });
          try {
            data = await r.json();
          } catch (e) {
            data = { ok: false, error: "HTTP " + r.status };
          }
        } catch (e) {
          data = { ok: false, error: "the agent did not answer: " + e };
        }
        if (data.ok) {
          window.sessionStorage.setItem(KEY, data.message);
          window.location.reload();
          return;
        }
        out.textContent = data.error || "refused";
        out.className = "form-result error";
        const prefix = "pipeline.sources[" + form.dataset.index + "].";
        (data.problems || []).forEach(function (p) {
          const span = document.createElement("span");
          span.className = "field-error error";
          let target = null;
          if (p.path.startsWith(prefix)) {
            const field = p.path.slice(prefix.length).split(/[.[]/)[0];
            target = form.querySelector("[name=\"" + CSS.escape(field) + "\"]");
          }
          if (target) {
            span.textContent = p.reason;
            target.insertAdjacentElement("afterend", span);
          } else {
            span.textContent = (p.path ? p.path + ": " : "") + p.reason;
            out.appendChild(document.createElement("br"));
            out.appendChild(span);
          }
        });
      });
    });
  });
})();
