// Aegis Edge workflows page: uploads a signed workflow file to the agent (the same checks as
// the fleet's) and shows the verdict, its reason and the signed receipt. Text is written with
// textContent only (never as HTML).
"use strict";

(function () {
  const LIMIT = 128 * 1024;

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("workflow-upload");
    if (!form) return;
    const input = document.getElementById("workflow-file");
    const result = document.getElementById("workflow-result");
    const receipt = document.getElementById("workflow-receipt");
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const file = input.files && input.files[0];
      receipt.hidden = true;
      if (!file) return;
      if (file.size > LIMIT) {
        result.textContent = "refused: the file is larger than 128 KiB, the largest workflow";
        result.className = "error";
        return;
      }
      result.textContent = "Verifying and applying…";
      result.className = "";
      let data;
      try {
        const r = await fetch("/api/workflows", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "text/markdown", "X-CSRF-Token": form.dataset.csrf },
          body: await file.arrayBuffer(),
        });
        try {
          data = await r.json();
        } catch (e) {
          data = { error: "HTTP " + r.status };
        }
      } catch (e) {
        data = { error: "the agent did not answer: " + e };
      }
      if (data.verdict) {
        result.textContent = data.verdict + (data.reason ? ": " + data.reason : "");
        result.className = data.verdict === "applied" ? "ok" : "error";
      } else {
        result.textContent = data.error || "no answer";
        result.className = "error";
      }
      if (data.receipt) {
        receipt.textContent = data.receipt;
        receipt.hidden = false;
      }
    });
  });
})();
