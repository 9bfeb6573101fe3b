// YAML editor: line numbers, error lines marked, click an error to jump to its line.
(function () {
  "use strict";
  var ta = document.getElementById("content");
  var gutter = document.getElementById("gutter");
  if (!ta || !gutter) return;
  var errors = (ta.dataset.errors || "").split(",").filter(Boolean).map(Number);
  function draw() {
    var n = ta.value.split("\n").length;
    var out = [];
    for (var i = 1; i <= n; i++) {
      out.push(errors.indexOf(i) >= 0 ? '<span class="err">' + i + "</span>" : String(i));
    }
    gutter.innerHTML = out.join("\n");
    gutter.scrollTop = ta.scrollTop;
  }
  function gotoLine(line) {
    var lines = ta.value.split("\n");
    var start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    ta.focus();
    ta.setSelectionRange(start, start + (lines[line - 1] || "").length);
    var lh = parseFloat(getComputedStyle(ta).lineHeight) || 18;
    ta.scrollTop = Math.max(0, (line - 5) * lh);
    gutter.scrollTop = ta.scrollTop;
  }
  ta.addEventListener("scroll", function () { gutter.scrollTop = ta.scrollTop; });
  ta.addEventListener("input", draw);
  document.querySelectorAll(".goto-line").forEach(function (a) {
    a.addEventListener("click", function (ev) { ev.preventDefault(); gotoLine(Number(a.dataset.line)); });
  });
  draw();
  if (errors.length) gotoLine(errors[0]);
})();
