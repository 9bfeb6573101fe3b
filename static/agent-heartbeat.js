// The agent console's heartbeat, in a dedicated Worker: Chrome throttles the timers of a hidden
// or frozen page (one wake-up a minute once a tab has been in the background a while), which
// would let the ACD sign a seat out while its agent works in another window. A worker's timers
// keep their pace. The page posts {token, every_ms}; the worker answers each beat's HTTP status.
"use strict";
var token = null, timer = null;

function beat() {
  fetch("/agent/api/heartbeat", {method: "POST", headers: {"Authorization": "Bearer " + token}})
    .then(function (r) { postMessage({status: r.status}); })
    .catch(function () { postMessage({status: 0}); });  // network down: the next beat tries again
}

onmessage = function (e) {
  token = e.data.token;
  clearInterval(timer);
  beat();
  timer = setInterval(beat, e.data.every_ms);
};
