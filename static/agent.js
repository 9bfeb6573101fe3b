// Agent console: polls the ACD agent API and the call's ticket; every action is one JSON call.
(function () {
  "use strict";
  var app = document.getElementById("agent-app");
  if (!app) return;
  var token = app.dataset.token;
  // the words come from the server (consoles/labels.py), one table for every page
  var L = JSON.parse((document.getElementById("agent-labels") || {}).textContent || "{}");
  var STATE = L.agent_states || {};
  var CALL = L.call_states || {};
  var KIND = L.transfer_kinds || {};
  // why the system paused a seat (the agent's own reasons are already in Chinese)
  var REASON = L.pause_reasons || {};
  var STATUS = L.statuses || {};
  var dirty = {};
  var lastTicket = null;
  var lastTransfers = "";
  var frontEnd = "twilio/";

  function $(id) { return document.getElementById(id); }
  function duration(s) {  // as consoles/labels.py duration: 45秒, 3分12秒, 1小时05分
    function two(n) { return (n < 10 ? "0" : "") + n; }
    if (s < 60) return s + "秒";
    if (s < 3600) return Math.floor(s / 60) + "分" + two(s % 60) + "秒";
    return Math.floor(s / 3600) + "小时" + two(Math.floor(s % 3600 / 60)) + "分";
  }
  function msg(text, bad) { var m = $("agent-msg"); m.textContent = text || ""; m.className = "msg" + (bad ? " bad" : ""); }

  function api(method, path, body) {
    return fetch("/agent/api/" + path, {
      method: method,
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: body ? JSON.stringify(body) : undefined
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401) { msg("登录已失效，请刷新页面重新上岗。", true); }
        if (!r.ok) { throw new Error(data.error || ("请求失败 " + r.status)); }
        return data;
      });
    });
  }
  // an error as the agent reads it: the server's own words are Chinese; what the browser says
  // when the network or the server is down ("Failed to fetch") is not
  function errText(e) {
    return e && /[\u4e00-\u9fff]/.test(e.message) ? e.message : "与服务器的连接中断，请稍候再试";
  }
  function act(method, path, body, done) {
    return api(method, path, body).then(function (d) { if (done) msg(done); refresh(); return d; })
      .catch(function (e) { msg(errText(e), true); });
  }

  var gone = false;
  function renderSeat(me) {
    var a = me.agent;
    if (a.state === "offline" && !gone) {  // signed out behind the page's back: the page offers 上岗 again, saying why
      gone = true;
      msg("坐席已离线，正在返回上岗页面…", true);
      window.location.reload();
      return;
    }
    var threeWay = a.state === "paused" && a.reason === "three-way";  // out of rotation while in a three-way call
    $("seat-state").textContent = threeWay ? "三方通话" : (STATE[a.state] || a.state);
    $("seat-state").className = "state s-" + (threeWay ? "busy" : a.state);
    var why = a.state === "paused" && a.reason && !threeWay ? (REASON[a.reason] || a.reason) : "";
    $("seat-reason").textContent = why && why !== STATE.paused ? "（" + why + "）" : "";
    $("btn-ready").disabled = a.state !== "paused" || threeWay;
    $("btn-pause").disabled = !(a.state === "ready" || a.state === "wrapup");
    $("btn-wrapup").disabled = a.state !== "wrapup";
  }

  function renderQueues(me) {
    var box = $("my-queues");
    if (!box || !me.queues) return;
    box.textContent = me.queues.length ? me.queues.map(function (q) {
      return q.name + " " + (q.waiting ? "排队 " + q.waiting + " 人，最长已等 " + q.longest_wait_text : "无人排队");
    }).join("；") : "（未配置坐席组）";
    box.className = me.queues.some(function (q) { return q.waiting; }) ? "waiting" : "muted";
  }

  function renderCall(me, t) {
    var call = me.call || (t && t.call && me.agent.state === "wrapup" ? t.call : null);
    $("no-call").hidden = !!call;
    $("call").hidden = !call;
    if (!call) return;
    var threeWay = me.agent.state === "paused" && me.agent.reason === "three-way";
    $("call-state").textContent = threeWay ? "三方转接中" : me.agent.state === "ringing" ? "来电振铃" : (CALL[call.state] || call.state);
    $("call-line").textContent = call.line || "";
    $("call-line-name").textContent = t && t.line_name ? t.line_name : "";
    var caller = call.caller || call.caller_masked || "";
    $("call-caller").textContent = caller && caller !== "unknown" ? caller : "无来电号码";
    var waited = call.entered ? Math.max(0, Math.round(Date.now() / 1000 - call.entered)) : 0;
    $("call-waited").textContent = duration(waited);
    $("btn-decline").hidden = me.agent.state !== "ringing";
    var busy = me.agent.state === "busy";
    var box = $("transfer-buttons");
    frontEnd = (t && t.front_end === "asterisk") ? "asterisk/" : "twilio/";  // which switchboard moves the call
    var key = JSON.stringify([t && t.transfers, t && t.expert_skill, busy, frontEnd]);
    if (key !== lastTransfers) {
      lastTransfers = key;
      box.innerHTML = "";
      ((t && t.transfers) || []).forEach(function (o) {
        box.appendChild(button("btn-3way-" + o.kind, "三方转接：" + (KIND[o.kind] || o.kind) + " " + o.name, !busy, function () {
          act("POST", frontEnd + "three-way", {kind: o.kind}, "正在呼叫" + o.name + "，接通后三方通话");
        }));
        if (frontEnd === "twilio/") {  // on Asterisk: three-way, then 退出三方 once the party answered
          box.appendChild(button("btn-cold-" + o.kind, "直接转出：" + o.name, !busy, function () {
            act("POST", "twilio/cold", {kind: o.kind}, "对方接听后您将自动退出");
          }, "secondary"));
        }
      });
      if (t && t.expert_skill) {
        box.appendChild(button("btn-queue-expert", "转入专家队列排队", !busy, function () {
          act("POST", "call/transfer", {skill: t.expert_skill}, "已转入专家队列，来电人保留排队位置");
        }, "secondary"));
      }
      if (!box.children.length) { box.innerHTML = '<span class="muted">这条热线没有分中心或专家坐席。</span>'; }
    }
    var tr = t && t.transfer;
    var active = tr && tr.transfer_state;
    $("transfer-state").textContent = active ? (tr.text || "") : "";
    $("btn-cancel-transfer").hidden = !active;
    $("btn-leave").hidden = !(active && tr.transfer_state === "joined");
  }

  function button(id, text, disabled, onclick, cls) {
    var b = document.createElement("button");
    b.type = "button"; b.id = id; b.textContent = text; b.disabled = disabled; if (cls) b.className = cls;
    b.addEventListener("click", onclick);
    return b;
  }

  function field(t, name) { return (t.fields || {})[name] || null; }

  function renderTicket(payload) {
    var t = payload && payload.ticket;
    $("no-ticket").hidden = !!t;
    $("ticket").hidden = !t;
    if (!t) { $("ticket-id").textContent = ""; $("ticket-status").textContent = ""; return; }
    if (lastTicket !== t.id) {
      if (Object.keys(dirty).length && lastTicket !== null) {  // a new call's ticket: say what was left unsaved
        msg("上一张工单" + ($("ticket-id").textContent ? " " + $("ticket-id").textContent : "") + " 的修改未确认，已被新来电的工单替换", true);
      }
      dirty = {}; lastTicket = t.id;
    }
    $("ticket-id").textContent = t.number || "";
    $("ticket-status").textContent = (t.status_text || STATUS[t.status] || t.status) +
      (t.manual_reason_text ? "：" + t.manual_reason_text : "");
    $("ticket-status").dataset.status = t.status;
    $("t-transcript").value = t.transcript || (t.transcript_status === "pending" ? "（正在识别…）" : "（无转写）");
    ["type", "line", "location", "unit", "subject", "summary"].forEach(function (n) {
      if (dirty[n]) return;
      var f = field(t, n);
      $("t-" + n).value = f && f.value != null ? f.value : "";
    });
    if (!dirty.enterprise) { var e = field(t, "enterprise"); $("t-enterprise").checked = !!(e && e.value); }
    document.querySelectorAll("#ticket .src").forEach(function (el) {
      var f = field(t, el.dataset.src);
      el.textContent = "";
      el.className = "src";
      if (f && f.source === "machine" && !f.confirmed) { el.textContent = f.uncertain ? "机器填写·待核实" : "机器填写"; el.className = "src tag machine" + (f.uncertain ? " uncertain" : ""); }
      else if (f && f.confirmed) { el.textContent = f.source === "agent" ? "坐席修改" : "已确认"; el.className = "src tag ok"; }
    });
    var dep = field(t, "department"), em = field(t, "emergency");
    $("t-department").textContent = dep && dep.value ? dep.value : "—";
    var pe = field(t, "emergency_possible");  // 可能紧急: the machine heard what may be an emergency
    $("t-emergency").textContent = em && em.value ? em.value : (pe && pe.value ? "可能紧急（" + pe.value + "）" : "无");
    $("possible-emergency").hidden = !(pe && pe.value) || !!(em && em.value);
    $("possible-emergency").textContent = pe && pe.value ? "可能紧急：来电人描述的情况可能需要 " + pe.value + "，请先核实是否需要立即转接" : "";
    $("t-contact-due").textContent = t.contact_due_text || "";
    $("t-due").textContent = t.due_text || "";
    $("btn-confirm").disabled = t.status === "finished" || t.status === "handed_off";
    // 办结: once the ticket is confirmed; the hand-off to the departments follows
    $("finish").hidden = !(t.status === "confirmed" || t.status === "finished" || t.status === "handed_off");
    $("btn-finish").disabled = t.status !== "confirmed";
    $("t-result").disabled = t.status !== "confirmed";
    if (t.result && t.status !== "confirmed") { $("t-result").value = t.result; }
  }

  // the demo phone (consoles/demo_phone.py): a simulated caller rings here instead of a handset
  var DP_STATE = {ringing: "来电振铃", talking: "通话中", held: "保持中"};
  function renderDemoPhone(call) {
    $("demo-phone").hidden = !call;
    if (!call) return;
    $("dp-state").textContent = DP_STATE[call.state] || call.state;
    $("dp-line").textContent = call.line + (call.line_name ? " " + call.line_name : "");
    $("dp-caller").textContent = call.caller || "无来电号码";
    $("dp-since").textContent = "已 " + duration(Math.max(0, Math.round(Date.now() / 1000 - call.since)));
    var list = $("dp-said");
    var said = call.said || [];
    if (list.children.length !== said.length) {
      list.innerHTML = "";
      said.forEach(function (s) {
        var li = document.createElement("li");
        li.textContent = s.who + "：" + s.text;
        list.appendChild(li);
      });
    }
    $("dp-answer").hidden = call.state !== "ringing";
    $("dp-hold").hidden = call.state !== "talking";
    $("dp-resume").hidden = call.state !== "held";
    $("dp-transfer-subcenter").hidden = $("dp-transfer-expert").hidden = call.state === "ringing";
  }
  function pollDemoPhone() {
    api("GET", "demo-phone").then(function (d) { renderDemoPhone(d.call); }).catch(function () {});
  }
  function demo(action, body, done) {
    api("POST", "demo-phone/" + action, body).then(function () { msg(done); pollDemoPhone(); refresh(); })
      .catch(function (e) { msg(errText(e), true); });
  }
  $("dp-answer").addEventListener("click", function () { demo("answer", null, "已接听"); });
  $("dp-hold").addEventListener("click", function () { demo("hold", null, "已保持，来电人听到等待音乐"); });
  $("dp-resume").addEventListener("click", function () { demo("resume", null, "已恢复通话"); });
  $("dp-transfer-subcenter").addEventListener("click", function () { demo("transfer", {kind: "subcenter"}, "正在转接分中心"); });
  $("dp-transfer-expert").addEventListener("click", function () { demo("transfer", {kind: "expert"}, "正在转接专家坐席"); });
  $("dp-hangup").addEventListener("click", function () { demo("hangup", null, "已挂断"); });
  pollDemoPhone();
  setInterval(pollDemoPhone, 1000);

  var busyPoll = false;
  function refresh() {
    if (busyPoll) return;
    busyPoll = true;
    api("GET", "me").then(function (me) {
      renderSeat(me);
      renderQueues(me);
      // the ticket stays while the agent has unsaved edits on it, even when 话后整理 ended by itself
      if (me.call || me.agent.state === "wrapup" || Object.keys(dirty).length) {
        return api("GET", "ticket").then(function (t) {
          renderCall(me, t.call ? t : null);
          renderTicket(t);
        });
      }
      renderCall(me, null);
      renderTicket(null);
    }).catch(function (e) { msg(errText(e), true); }).then(function () { busyPoll = false; });
  }

  document.querySelectorAll("#ticket input, #ticket select").forEach(function (el) {
    el.addEventListener("input", function () { dirty[el.name] = true; });
    el.addEventListener("change", function () { dirty[el.name] = true; });
  });
  $("ticket").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var edits = {};
    Object.keys(dirty).forEach(function (n) {
      var el = $("t-" + n);
      edits[n] = el.type === "checkbox" ? el.checked : el.value;
    });
    api("POST", "ticket/confirm", {edits: edits}).then(function (t) {
      dirty = {};
      renderTicket(t);
      msg("工单已确认");
    }).catch(function (e) { msg(errText(e), true); });
  });
  $("finish").addEventListener("submit", function (ev) {
    ev.preventDefault();  // same POST as the plain form, with the session's CSRF token, answered in JSON
    var result = $("t-result").value.trim();
    if (!result) { msg("请填写办理结果", true); return; }
    fetch($("finish").action, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": app.dataset.csrf},
      body: JSON.stringify({result: result, ticket: lastTicket})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (d) {
        if (!r.ok) { throw new Error(d.error || ("请求失败 " + r.status)); }
        return d;
      });
    }).then(function (d) { renderTicket(d); msg("工单已办结，已排队派发"); })
      .catch(function (e) { msg(errText(e), true); });
  });
  $("btn-ready").addEventListener("click", function () { act("POST", "state", {state: "ready"}, "已就绪，等待来电"); });
  $("btn-pause").addEventListener("click", function () { act("POST", "state", {state: "paused", reason: $("pause-reason").value}, "已小休"); });
  $("btn-wrapup").addEventListener("click", function () { act("POST", "wrapup/done", null, "话后整理完成，已就绪"); });
  $("btn-decline").addEventListener("click", function () { act("POST", "call/decline", null, "已拒接，来电转给下一位坐席"); });
  $("btn-cancel-transfer").addEventListener("click", function () { act("POST", frontEnd + "cancel", null, "已取消转接，来电人仍与您通话"); });
  $("btn-leave").addEventListener("click", function () { act("POST", frontEnd + "leave", null, "您已退出三方通话"); });

  refresh();
  setInterval(refresh, 1500);
  // the heartbeat: every third of the ACD's timeout, from a worker so a hidden tab keeps its seat;
  // each beat's answer carries the pace of the rules now (every_ms)
  var everyMs = Number(app.dataset.heartbeatEveryMs) || 10000;
  function beatFromThePage() {  // no worker here (or it failed to start): the page's own timer
    var timer = null, current = null;
    function pace(ms) {
      if (!(ms >= 1000) || ms === current) return;
      current = ms;
      clearInterval(timer);
      timer = setInterval(beat, current);
    }
    function beat() {
      api("POST", "heartbeat").then(function (d) { pace(Number(d.every_ms)); }).catch(function () {});
    }
    pace(everyMs);
    beat();
  }
  if (window.Worker) {
    var beats = new Worker(app.dataset.heartbeatWorker);
    beats.onmessage = function (e) {
      if (e.data.status === 401) { msg("登录已失效，请刷新页面重新上岗。", true); }
    };
    beats.onerror = function () { beats.terminate(); beatFromThePage(); };
    beats.postMessage({token: token, every_ms: everyMs});
  } else {
    beatFromThePage();
  }
})();
