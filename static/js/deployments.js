// The deployments page: polls the health data and redraws the tables. A static file (the
// page security policy runs no inline script); the URL and period come from data attributes.
(function () {
  const box = document.getElementById("dp-models");
  if (!box) return;
  const url = box.dataset.url;
  const stamp = document.getElementById("dp-updated");
  const ms = (v) => (v === null || v === undefined ? "–" : Math.round(v) + " ms");
  const pct = (v) => (100 * v).toFixed(1) + "%";
  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function render(data) {
    box.replaceChildren();
    if (!data.models.length) { box.textContent = "No model is configured."; return; }
    for (const model of data.models) {
      const h = document.createElement("h2");
      h.textContent = model.name + " · " + model.strategy;
      const table = document.createElement("table");
      table.className = "dp-table";
      table.innerHTML = "<thead><tr><th>Deployment</th><th>Req/s</th><th>p50</th><th>p95</th>" +
        "<th>EWMA</th><th>Errors</th><th>In flight</th><th>Breaker</th><th>Share</th></tr></thead>";
      const body = document.createElement("tbody");
      for (const d of model.deployments) {
        const tr = document.createElement("tr");
        tr.append(cell(d.name + " (" + d.provider + " " + d.upstream_model + ")"),
          cell(d.rate_per_second.toFixed(2)), cell(ms(d.p50_ms)), cell(ms(d.p95_ms)),
          cell(ms(d.ttft_ewma_ms ?? d.ewma_ms)), cell(pct(d.error_rate)), cell(String(d.in_flight)));
        const state = document.createElement("td");
        const badge = document.createElement("span");
        badge.className = "dp-state " + d.state;
        badge.textContent = d.state.replace("_", "-");
        if (d.reason) badge.title = d.reason;
        state.append(badge);
        const share = document.createElement("td");
        const bar = document.createElement("span");
        bar.className = "dp-share";
        bar.style.width = Math.round(60 * d.share) + "px";
        share.append(bar, " " + pct(d.share));
        tr.append(state, share);
        body.append(tr);
      }
      table.append(body);
      box.append(h, table);
    }
  }
  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        render(await response.json());
        stamp.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      } else {
        stamp.textContent = "Could not refresh (" + response.status + ").";
      }
    } catch (err) {
      stamp.textContent = "Could not refresh.";
    }
  }
  refresh();
  setInterval(refresh, Number(box.dataset.refreshSeconds) * 1000);
})();
