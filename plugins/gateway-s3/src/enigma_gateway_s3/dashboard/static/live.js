// Live progress on the backups page: every 2 s (10 s with nothing running) it asks
// /api/running for the running backups' cells and updates their rows; when the set of
// running backups changes (one finished or started) it reloads the page.
(function () {
  "use strict";
  const rows = new Map();
  document.querySelectorAll("tr[data-running]").forEach((row) => rows.set(row.dataset.backup, row));
  async function tick() {
    let running;
    try {
      const response = await fetch("/api/running", { cache: "no-store", credentials: "same-origin" });
      if (!response.ok) return schedule();
      running = await response.json();
    } catch (error) {
      return schedule();
    }
    const ids = new Set(running.map((b) => b.id));
    if (ids.size !== rows.size || [...ids].some((id) => !rows.has(id))) {
      location.reload();
      return;
    }
    for (const backup of running) {
      rows.get(backup.id).querySelectorAll("[data-field]").forEach((cell) => {
        cell.textContent = backup.cells[cell.dataset.field] ?? cell.textContent;
      });
    }
    schedule();
  }
  function schedule() {
    setTimeout(tick, rows.size ? 2000 : 10000);
  }
  schedule();
})();
