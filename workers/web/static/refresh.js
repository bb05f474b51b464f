// Refreshes a region of the page in place from the URL in its data-refresh-url, so the
// inbox stays current without a reload (and without losing the keyboard focus elsewhere).
(function () {
  for (const region of document.querySelectorAll("[data-refresh-url]")) {
    const seconds = Number(region.dataset.refreshSeconds || "15");
    const refresh = async function () {
      try {
        const answer = await fetch(region.dataset.refreshUrl, { credentials: "same-origin" });
        if (answer.redirected || answer.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
          return;
        }
        if (answer.ok) {
          region.innerHTML = await answer.text();
          region.dataset.refreshedAt = new Date().toISOString();
        }
      } catch (err) {
        // The API restarting: try again at the next tick.
      }
    };
    window.setInterval(refresh, seconds * 1000);
  }
})();
