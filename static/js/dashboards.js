// Renders the server-built Plotly figures: each .js-plot names the json_script holding its
// figure. Plotly comes from /static/vendor (never a CDN); PNG export is plotly's toImage.
(function () {
  "use strict";

  function render(el) {
    var source = document.getElementById(el.dataset.figure);
    if (!source || typeof Plotly === "undefined") return;
    var figure = JSON.parse(source.textContent);
    var config = {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["lasso2d", "select2d"],
      toImageButtonOptions: { format: "png", filename: el.dataset.filename, scale: 2 },
    };
    Plotly.newPlot(el, figure.data, figure.layout, config);
  }

  function download(event) {
    var el = document.getElementById(event.currentTarget.dataset.plot);
    event.preventDefault();
    if (el && el.data) {
      Plotly.downloadImage(el, { format: "png", filename: el.dataset.filename, scale: 2 });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".js-plot").forEach(render);
    document.querySelectorAll(".js-png").forEach(function (link) {
      link.addEventListener("click", download);
    });
  });
})();
