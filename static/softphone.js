// The seat's WebRTC softphone (consoles/softphone.py): JsSIP registers to Asterisk over SIP on a
// WebSocket as the seat's PJSIP endpoint; a call the ACD sends to this seat rings here.
(function () {
  "use strict";
  var box = document.getElementById("softphone");
  if (!box || !window.JsSIP) return;
  function $(id) { return document.getElementById(id); }

  // as call_routing/numbers.py mask(): 13812345678 -> 138****5678
  function mask(raw) {
    var d = String(raw || "").replace(/\D/g, "");
    if (!d) return "未知号码";
    if (d.indexOf("0086") === 0) d = d.slice(4);
    else if (d.indexOf("86") === 0 && d.length === 13) d = d.slice(2);
    function stars(n) { return new Array(n + 1).join("*"); }
    if (d.length >= 11) return d.slice(0, 3) + stars(d.length - 7) + d.slice(-4);
    if (d.length >= 7) return stars(d.length - 4) + d.slice(-4);
    if (d.length > 2) return stars(d.length - 2) + d.slice(-2);
    return "**";
  }

  var REG = {registered: "已注册", unregistered: "未注册", connecting: "正在连接…", failed: "注册失败"};
  var CAUSES = {  // JsSIP's causes as the agent reads them
    "Connection Error": "连不上电话服务器", "Authentication Error": "分机密码不对，请联系管理员",
    "Request Timeout": "电话服务器没有响应", "Rejected": "电话服务器拒绝了登记",
    "Canceled": "来电已取消", "Busy": "占线", "No Answer": "无人接听", "Terminated": "通话已结束",
    "Bye": "对方已挂断", "User Denied Media Access": "浏览器不允许使用麦克风",
    "WebRTC Error": "浏览器无法建立语音连接", "SIP Failure Code": "电话服务器拒绝了通话"
  };
  // the phone library's reasons are English: ours in words, any other one said plainly
  function cause(why) { return CAUSES[why] || "电话服务器返回错误，请联系管理员"; }
  function reg(state, why) {
    $("sp-reg").textContent = REG[state];
    $("sp-reg").dataset.state = state;
    $("sp-reg").className = "state s-" + (state === "registered" ? "ready" : "offline");
    $("sp-reg-why").textContent = why ? "（" + cause(why) + "）" : "";
  }

  var session = null;
  function show(status, state) {
    $("sp-status").textContent = status;
    $("sp-call").dataset.state = state;
    $("sp-call").hidden = state === "idle";
    $("sp-idle").hidden = state !== "idle";
    $("sp-answer").hidden = state !== "ringing";
    $("sp-hold").hidden = state !== "talking" && state !== "held";
    $("sp-hold").textContent = state === "held" ? "恢复通话" : "保持";
    $("sp-hangup").hidden = state === "ended";
  }
  show("", "idle");

  var socket = new JsSIP.WebSocketInterface(box.dataset.ws);
  var ua = new JsSIP.UA({sockets: [socket], uri: box.dataset.uri, authorization_user: box.dataset.user,
                         password: box.dataset.password, display_name: box.dataset.display,
                         register: true, register_expires: 300, user_agent: "12345-agent-console"});
  reg("connecting");
  ua.on("registered", function () { reg("registered"); });
  ua.on("unregistered", function () { reg("unregistered"); });
  ua.on("disconnected", function () { reg("unregistered", "Connection Error"); });
  ua.on("registrationFailed", function (e) { reg("failed", e.cause); });

  ua.on("newRTCSession", function (e) {
    if (e.originator !== "remote") return;
    if (session) { e.session.terminate({status_code: 486}); return; }  // one call at a time
    var s = session = e.session;
    var ticket = e.request.getHeader("X-Hotline-Ticket");
    $("sp-caller").textContent = mask(s.remote_identity.uri.user);
    $("sp-ticket").textContent = ticket ? "· 工单 " + ticket : "";
    show("来电振铃中", "ringing");
    s.on("peerconnection", function (p) {
      p.peerconnection.addEventListener("track", function (t) { $("sp-audio").srcObject = t.streams[0]; });
    });
    s.on("confirmed", function () { show("通话中", "talking"); });
    s.on("hold", function () { show("已保持（对方听等待音乐）", "held"); });
    s.on("unhold", function () { show("通话中", "talking"); });
    function over(ev) {
      if (session !== s) return;
      session = null;
      show(CAUSES[ev.cause] || "通话已结束", "ended");
      setTimeout(function () { if (!session) show("", "idle"); }, 4000);
    }
    s.on("ended", over);
    s.on("failed", over);
  });

  $("sp-answer").addEventListener("click", function () {
    if (session && !session.isEstablished()) {
      show("正在接通…", "answering");
      session.answer({mediaConstraints: {audio: true, video: false}});
    }
  });
  $("sp-hold").addEventListener("click", function () {
    if (!session || !session.isEstablished()) return;
    if (session.isOnHold().local) session.unhold(); else session.hold();
  });
  $("sp-hangup").addEventListener("click", function () { if (session) session.terminate(); });
  window.addEventListener("beforeunload", function () { ua.stop(); });
  ua.start();
})();
