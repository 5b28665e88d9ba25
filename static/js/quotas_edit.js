// The quota editor page. A static file, not an inline script: the page security policy
// (script-src 'self') runs no inline code.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    // A dry run answers with the whole page: bring its report into view.
    var report = document.getElementById("dry-run");
    if (report) report.scrollIntoView();
    // Clicking a problem selects its line in the textarea.
    document.querySelectorAll(".q-issues li[data-line]").forEach(function (item) {
      item.addEventListener("click", function () {
        var line = parseInt(item.dataset.line, 10);
        var area = document.querySelector("textarea.yaml");
        if (!line || !area) return;
        var lines = area.value.split("\n");
        var start = lines.slice(0, line - 1).join("\n").length + (line > 1 ? 1 : 0);
        area.focus();
        area.setSelectionRange(start, start + (lines[line - 1] || "").length);
        area.scrollTop = Math.max(0, (line - 5) * 19);
      });
    });
  });
  // <form data-confirm="question"> asks before submitting (instead of an inline onsubmit).
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
