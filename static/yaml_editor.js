// YAML editor: line numbers, error lines marked, click an error to jump to its line; and, from the
// rules file's JSON Schema (call_routing/schema.py, served at data-schema): a hint line for the key
// under the cursor, and completion of the keys allowed where the cursor is (Ctrl+Space, or typing at
// a line's start). The enclosing keys are found from the indentation.
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

  // -- hints and completion from the schema ---------------------------------------------------
  var hint = document.getElementById("yaml-hint");
  var menu = document.getElementById("yaml-complete");
  var schema = null;
  var KEY = /^(\s*)("([^"]*)"|'([^']*)'|[^\s#"'{}\[\],:-][^:#]*?|-[^\s:#][^:#]*?)\s*:(?=\s|$)/;

  function parse(text) {  // one line: its indentation, its key (if any) and what follows the key
    var m = KEY.exec(text);
    var indent = text.length - text.replace(/^\s+/, "").length;
    if (!m) return {indent: indent, key: null, rest: text.trim()};
    var key = m[3] !== undefined ? m[3] : m[4] !== undefined ? m[4] : m[2];
    return {indent: m[1].length, key: key, rest: text.slice(m[0].length).replace(/\s+#.*$/, "").trim()};
  }
  function blank(text) { return !text.trim() || /^\s*#/.test(text); }
  function unquote(v) { return v.replace(/^["']|["']$/g, ""); }

  function ancestors(lines, row, indent) {  // the keys enclosing a position, outermost first
    var out = [];
    for (var i = row - 1; i >= 0 && indent > 0; i--) {
      if (blank(lines[i])) continue;
      var p = parse(lines[i]);
      if (p.key !== null && p.indent < indent) { out.unshift({key: p.key, row: i, indent: p.indent}); indent = p.indent; }
    }
    return out;
  }
  function siblings(lines, row, indent) {  // the keys written beside a line, with their values
    var out = {};
    var step = function (i, d) {
      for (; i >= 0 && i < lines.length; i += d) {
        if (blank(lines[i])) continue;
        var p = parse(lines[i]);
        if (p.indent < indent) return;
        if (p.indent === indent && p.key !== null) out[p.key] = unquote(p.rest);
      }
    };
    step(row, -1);
    step(row + 1, 1);
    return out;
  }

  function deref(node) {
    while (node && node.$ref) node = schema.$defs[node.$ref.split("/").pop()];
    return node;
  }
  function mapping(node, sibs) {  // the mapping schema of a value, its branch chosen by the keys beside
    node = deref(node);
    if (!node) return null;
    var d = node.discriminator;
    if (node.oneOf && d && d.mapping[sibs[d.propertyName]]) return deref({$ref: d.mapping[sibs[d.propertyName]]});
    var branches = (node.oneOf || node.anyOf || []).map(deref).filter(function (b) { return b && b.properties; });
    if (!branches.length) return node;
    var merged = {properties: {}, additionalProperties: false};
    branches.forEach(function (b) { Object.keys(b.properties).forEach(function (k) { merged.properties[k] = merged.properties[k] || b.properties[k]; }); });
    return merged;
  }
  function child(obj, key) {
    if (!obj) return null;
    if (obj.properties && obj.properties[key]) return obj.properties[key];
    var patterns = obj.patternProperties || {};  // skill ids, line numbers
    for (var re in patterns) if (new RegExp(re).test(key)) return patterns[re];
    return typeof obj.additionalProperties === "object" ? obj.additionalProperties : null;
  }
  function mappingAt(lines, anc, row, indent) {  // the schema of the mapping holding keys at this indent
    var node = schema;
    for (var j = 0; j < anc.length && node; j++) {
      node = child(mapping(node, siblings(lines, anc[j].row, anc[j].indent)), anc[j].key);
    }
    return node && mapping(node, siblings(lines, row, indent));
  }

  function where() {  // the cursor: its line, the key it is on and the mapping that key belongs to
    var lines = ta.value.split("\n");
    var upto = ta.value.slice(0, ta.selectionStart).split("\n");
    var row = upto.length - 1, col = upto[row].length, text = lines[row];
    var p = parse(text);
    var indent = p.key !== null ? p.indent : upto[row].length - upto[row].replace(/^\s+/, "").length;
    var anc = ancestors(lines, row, indent);
    var obj = mappingAt(lines, anc, row, indent);
    var path = anc.map(function (a) { return a.key; });
    var key = p.key;
    var open = text.lastIndexOf("{", col - 1);
    if (p.key !== null && open > text.indexOf(":") && text.lastIndexOf("}", col - 1) < open) {  // in {a: 1, b: 2}
      var start = Math.max(open, text.lastIndexOf(",", col - 1)) + 1;
      var inner = text.slice(start).split(/[,}]/)[0].split(":")[0].trim();
      path.push(p.key);
      obj = mapping(child(obj, p.key), {});
      key = inner || null;
    }
    return {lines: lines, row: row, col: col, text: text, indent: indent, path: path, obj: obj, key: key};
  }

  function describe(node, fallback) {  // what a key means, its type, allowed values, range, default
    var d = deref(node) || {};
    var parts = [];
    var type = node.type || d.type || (d.properties || d.oneOf ? "mapping" : "");
    var choices = node.enum || d.enum || (node.anyOf || []).map(deref).filter(function (b) { return b && "const" in b; })
      .map(function (b) { return b.const; });
    if (choices.length) parts.push("可选值：" + choices.join(" | "));
    else if (type) parts.push({string: "文本", integer: "整数", boolean: "true/false", object: "mapping"}[type] || type);
    if ("minimum" in node) parts.push("范围 " + node.minimum + "–" + node.maximum);
    if (node.default !== undefined && node.default !== null) parts.push("默认 " + node.default);
    return [node.description || d.description || fallback || ""].concat(parts).filter(Boolean).join("；");
  }

  function showHint() {
    if (!schema || !hint) return;
    var w = where();
    var node = w.key !== null && child(w.obj, w.key);
    if (node) {
      hint.textContent = w.path.concat([w.key]).join(".") + "：" + describe(node, w.obj.description);
    } else if (w.obj && w.obj.properties) {
      hint.textContent = (w.path.join(".") || "（顶层）") + " 下可写的键：" + Object.keys(w.obj.properties).join(", ");
    } else {
      hint.textContent = w.key !== null && w.obj ? w.path.concat([w.key]).join(".") + "：不认识的键" : "";
    }
  }

  // completion: the keys allowed here that are not written yet
  var shown = [], chosen = 0, typed = null;
  function complete(force) {
    var w = where();
    var before = w.text.slice(0, w.col);
    var m = /^(\s*)([A-Za-z0-9_]*)$/.exec(before);
    if (!schema || !m || !w.obj || !w.obj.properties || (!force && !m[2])) return closeMenu();
    var have = siblings(w.lines, w.row, m[1].length);
    shown = Object.keys(w.obj.properties).filter(function (k) {
      return k.indexOf(m[2]) === 0 && (!(k in have) || k === m[2]);
    });
    if (!shown.length) return closeMenu();
    typed = m[2];
    chosen = 0;
    render(w.row, m[1].length);
  }
  function render(row, col) {
    menu.innerHTML = "";
    shown.forEach(function (k, i) {
      var li = document.createElement("li");
      li.textContent = k;
      li.className = i === chosen ? "chosen" : "";
      li.addEventListener("mousedown", function (ev) { ev.preventDefault(); chosen = i; accept(); });
      menu.appendChild(li);
    });
    var cs = getComputedStyle(ta);
    var lh = parseFloat(cs.lineHeight) || 18;
    var ctx = document.createElement("canvas").getContext("2d");
    ctx.font = cs.font;
    menu.style.top = (ta.offsetTop + parseFloat(cs.paddingTop) + (row + 1) * lh - ta.scrollTop) + "px";
    menu.style.left = (ta.offsetLeft + parseFloat(cs.paddingLeft) + ctx.measureText(" ".repeat(col)).width - ta.scrollLeft) + "px";
    menu.hidden = false;
  }
  function closeMenu() { if (menu) menu.hidden = true; shown = []; }
  function accept() {
    var key = shown[chosen], pos = ta.selectionStart;
    ta.setRangeText(key + ": ", pos - typed.length, pos, "end");
    closeMenu();
    draw();
    showHint();
    ta.focus();
  }
  ta.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey && (ev.key === " " || ev.code === "Space")) { ev.preventDefault(); complete(true); return; }
    if (!menu || menu.hidden) return;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      chosen = (chosen + (ev.key === "ArrowDown" ? 1 : shown.length - 1)) % shown.length;
      Array.prototype.forEach.call(menu.children, function (li, i) { li.className = i === chosen ? "chosen" : ""; });
    } else if (ev.key === "Enter" || ev.key === "Tab") {
      ev.preventDefault();
      accept();
    } else if (ev.key === "Escape") {
      closeMenu();
    }
  });
  ta.addEventListener("input", function () { if (menu) complete(false); showHint(); });
  ["keyup", "click", "focus"].forEach(function (e) { ta.addEventListener(e, showHint); });
  ta.addEventListener("blur", closeMenu);
  ta.addEventListener("scroll", closeMenu);
  if (ta.dataset.schema) {
    fetch(ta.dataset.schema, {credentials: "same-origin"}).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) { schema = s; showHint(); }).catch(function () {});
  }
})();
