// The agent console's heartbeat, in a dedicated Worker: Chrome throttles the timers of a hidden
// or frozen page (one wake-up a minute once a tab has been in the background a while), which
// would let the ACD sign a seat out while its agent works in another window. A worker's timers
// keep their pace. The page posts {token, every_ms}; the worker answers each beat's HTTP status.
// Each beat's answer carries the pace of the rules now (every_ms): a shortened timeout is
// followed without reloading the page.
"use strict";
var token = null, timer = null, everyMs = null;

function pace(ms) {
  if (!(ms >= 1000) || ms === everyMs) return;
  everyMs = ms;
  clearInterval(timer);
  timer = setInterval(beat, everyMs);
}

function beat() {
  fetch("/agent/api/heartbeat", {method: "POST", headers: {"Authorization": "Bearer " + token}})
    .then(function (r) {
      postMessage({status: r.status});
      if (r.ok) return r.json().then(function (d) { pace(Number(d.every_ms)); });
    })
    .catch(function () { postMessage({status: 0}); });  // network down: the next beat tries again
}

onmessage = function (e) {
  token = e.data.token;
  everyMs = null;
  pace(e.data.every_ms);
  beat();
};
