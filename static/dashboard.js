// Supervisor dashboard: redraws figures and the hourly chart (inline SVG) every 5 seconds.
(function () {
  "use strict";
  var script = document.getElementById("dashboard-script");
  var url = script && script.dataset.url;
  var ticketsUrl = script && script.dataset.tickets;
  var NS = "http://www.w3.org/2000/svg";
  function pct(v) { return v == null ? "—" : (v * 100).toFixed(1) + "%"; }
  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text != null) e.textContent = text;
    return e;
  }
  function chart(hourly) {
    var svg = document.getElementById("hourly-chart");
    if (!svg) return;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 720, H = 220, L = 40, R = 40, T = 10, B = 30;
    var w = (W - L - R) / 24, max = 1;
    hourly.forEach(function (h) { max = Math.max(max, h.offered); });
    svg.appendChild(el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis"}));
    svg.appendChild(el("text", {x: 4, y: T + 10, "class": "lbl"}, String(max)));
    svg.appendChild(el("text", {x: W - R + 4, y: T + 10, "class": "lbl"}, "100%"));
    var pts = [];
    hourly.forEach(function (h) {
      var x = L + h.hour * w, bh = (H - B - T) * h.offered / max;
      var bar = el("rect", {x: x + 2, y: H - B - bh, width: w - 4, height: bh, "class": "bar"});
      bar.appendChild(el("title", {}, h.hour + "时：" + h.offered + " 通，接通率 " + pct(h.answer_rate)));
      svg.appendChild(bar);
      if (h.answer_rate != null) pts.push((x + w / 2) + "," + (T + (H - B - T) * (1 - h.answer_rate)));
    });
    for (var i = 0; i < 24; i += 3) svg.appendChild(el("text", {x: L + i * w + 2, y: H - 10, "class": "lbl"}, i + "时"));
    if (pts.length) svg.appendChild(el("polyline", {points: pts.join(" "), "class": "rate"}));
    pts.forEach(function (p) { var xy = p.split(","); svg.appendChild(el("circle", {cx: xy[0], cy: xy[1], r: 3, "class": "dot"})); });
  }
  function cell(tr, v) { var td = document.createElement("td"); if (v != null && v.nodeType) td.appendChild(v); else td.textContent = v == null ? "" : v; tr.appendChild(td); return td; }
  function ticketLink(id, text) {
    var a = document.createElement("a");
    a.href = ticketsUrl + "/" + encodeURIComponent(id);
    a.textContent = text;
    return a;
  }
  function rows(selector, items, columns, empty, cols) {
    var body = document.querySelector(selector);
    if (!body) return;
    body.innerHTML = "";
    items.forEach(function (item) {
      var tr = document.createElement("tr");
      if (item.urgent && selector === "#waiting tbody") tr.className = "urgent";
      columns(item).forEach(function (v) { cell(tr, v); });
      body.appendChild(tr);
    });
    if (!items.length) {
      var tr = document.createElement("tr"), td = cell(tr, empty);
      td.colSpan = cols; td.className = "muted"; tr.className = "none";
      body.appendChild(tr);
    }
  }
  function agentRow(a) {
    var state = document.createElement("span");
    state.className = "state s-" + a.state; state.textContent = a.state_text;
    var call = "—";
    if (a.line) {
      call = document.createElement("span");
      call.appendChild(document.createTextNode(a.line_text));
      if (a.ticket) { call.appendChild(document.createTextNode(" · ")); call.appendChild(ticketLink(a.ticket, "工单 " + (a.ticket_number || "建单中"))); }
      if (a.urgent) { call.appendChild(document.createTextNode(" ")); call.appendChild(urgentTag(a.urgent_text)); }
    }
    return [a.name, state, a.in_state_text, call, a.answered_today];
  }
  function urgentTag(text) {  // 可能紧急（119）: what the pre-fill heard may need an emergency line
    var tag = document.createElement("span");
    tag.className = "tag urgent"; tag.textContent = text;
    return tag;
  }
  function withNote(text, note) {  // a group's name with a line under it (a seat group an edit removed)
    if (!note) return text;
    var span = document.createElement("span"), small = document.createElement("small");
    span.appendChild(document.createTextNode(text));
    span.appendChild(document.createElement("br"));
    small.textContent = note;
    span.appendChild(small);
    return span;
  }
  function waitingRow(w) {
    return [w.urgent ? urgentTag(w.urgent_text) : "", w.line_text, withNote(w.skill_name, w.moved_text), w.waited_text,
      "第 " + w.position + " 位", w.caller, w.callback_text];
  }
  function supervision(list) {  // 督办, as the page draws it (templates/admin/dashboard.html)
    var box = document.getElementById("supervision");
    if (!box) return;
    box.innerHTML = "";
    list.forEach(function (s) {
      var div = document.createElement("div"), head = document.createElement("strong"), ul = document.createElement("ul");
      div.className = "sup";
      head.textContent = s.kind_text + "：" + s.key_text;
      div.appendChild(head);
      div.appendChild(document.createTextNode(" · " + s.callers + " 位来电人 · " + s.raised_text));
      s.tickets.forEach(function (t) {
        var li = document.createElement("li");
        li.appendChild(ticketLink(t.id, "工单 " + t.number));
        li.appendChild(document.createTextNode(" " + t.line_text + " " + t.type_text + " " + (t.location || "") +
          " · 办结时限 " + t.due_text + " · " + t.status_text));
        ul.appendChild(li);
      });
      div.appendChild(ul);
      box.appendChild(div);
    });
    if (!list.length) { var p = document.createElement("p"); p.className = "muted"; p.textContent = "暂无督办。"; box.appendChild(p); }
  }
  // figures that could not be refreshed must not pass for the room as it is now
  function stale(why) {
    var e = document.getElementById("stale");
    if (!e) return;
    e.hidden = !why;
    e.textContent = why ? "数据未能更新：" + why + "（以下为 " + document.getElementById("updated-at").textContent + " 的数据）" : "";
  }
  function render(d) {
    stale(null);
    var t = d.today.total;
    document.querySelectorAll("#kpi-total [data-k]").forEach(function (e) {
      var k = e.dataset.k, v = t[k];
      e.textContent = k === "offered" ? v : pct(v);
    });
    document.getElementById("updated-at").textContent = d.at_text;
    document.querySelectorAll("#room-now [data-k]").forEach(function (e) { e.textContent = d.room[e.dataset.k]; });
    var regrouped = document.getElementById("regrouped");  // a seat group an edit removed: where its callers went
    if (regrouped) { regrouped.textContent = d.room.regrouped_text || ""; regrouped.hidden = !d.room.regrouped_text; }
    var urgent = document.getElementById("room-urgent");
    if (urgent) urgent.className = "kpi" + (d.room.urgent ? " urgent" : "");
    var body = document.querySelector("#queues tbody");
    body.innerHTML = "";
    d.queues.forEach(function (q) {
      if (!q.waiting && !q.logged_in) return;
      var tr = document.createElement("tr");
      if (q.removed) tr.className = "removed";
      [withNote(q.name, q.note), q.waiting, q.longest_wait_text, q.agents.ready, q.agents.ringing, q.agents.busy,
        q.agents.wrapup, q.agents.paused].forEach(function (v) { cell(tr, v); });
      body.appendChild(tr);
    });
    rows("#agents tbody", d.agents || [], agentRow, "暂无坐席在岗。", 5);
    rows("#waiting tbody", d.waiting || [], waitingRow, "当前没有来电排队。", 7);
    chart(d.today.hourly);
    rows("#line-kpis tbody", Object.keys(d.today.lines || {}).sort(), function (number) {
      var l = d.today.lines[number];
      return [l.line_text, l.offered, l.answered, pct(l.connection_rate), pct(l.answer_rate_15s),
        pct(l.abandon_rate), pct(l.satisfaction_rate) + "（" + l.surveyed + "）"];
    }, "今日暂无来电。", 7);
    supervision(d.supervision || []);
    var procs = document.querySelector("#processes tbody");
    if (procs && d.processes && d.processes.length) {
      procs.innerHTML = "";
      d.processes.forEach(function (p) {
        var tr = document.createElement("tr");
        if (p.state !== "running") tr.className = "bad";
        [p.label, p.state_label, p.since, p.restarts].forEach(function (v) { var td = document.createElement("td"); td.textContent = v; tr.appendChild(td); });
        procs.appendChild(tr);
      });
    }
    var alerts = document.getElementById("alerts");
    if (alerts) {
      alerts.innerHTML = "";
      (d.alerts.length ? d.alerts : [{text: "暂无告警。", none: true}]).forEach(function (a) {
        var li = document.createElement("li");
        li.textContent = a.text;
        if (a.ticket) { li.appendChild(document.createTextNode(" ")); li.appendChild(ticketLink(a.ticket, "查看工单")); }
        if (a.none) li.className = "muted";
        alerts.appendChild(li);
      });
    }
  }
  var first = document.getElementById("dashboard-data");
  if (first) chart(JSON.parse(first.textContent).today.hourly);
  if (url) setInterval(function () {
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) throw new Error("登录已失效，请刷新页面重新登录");
      if (r.status === 403) throw new Error("当前账号无权查看监控大屏");
      if (!r.ok) throw new Error("服务器暂时无法提供数据，正在重试");
      return r.json();
    }).then(render).catch(function (e) {
      stale(e && /[\u4e00-\u9fff]/.test(e.message) ? e.message : "与服务器的连接中断，正在重试");
    });
  }, 5000);
})();
