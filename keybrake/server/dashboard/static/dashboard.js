// keybrake dashboard: refresh the chart and the keys every few seconds, in place.
// Served by keybrake itself (the page's Content-Security-Policy allows no inline script).
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const every = Number(live.dataset.refresh) || 5000;

  function busy() {
    // Don't swap the table under a Revoke button the operator has focused.
    const active = document.activeElement;
    return active !== null && active.tagName === "BUTTON" && live.contains(active);
  }

  async function refresh() {
    if (document.visibilityState === "visible" && !busy()) {
      try {
        const answer = await fetch(live.dataset.src, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { Accept: "text/html" },
        });
        if (answer.status === 401) {
          // The session ended: the page says why, with the sign-in form.
          window.location.reload();
          return;
        }
        if (answer.ok) {
          const html = await answer.text();
          const open = Array.from(live.querySelectorAll("details[open]"), (d) => d.id);
          live.innerHTML = html;
          for (const id of open) {
            const details = document.getElementById(id);
            if (details) {
              details.open = true;
            }
          }
        }
      } catch (error) {
        // The server is unreachable for now: keep the last view and try again.
      }
    }
    window.setTimeout(refresh, every);
  }

  window.setTimeout(refresh, every);
})();
