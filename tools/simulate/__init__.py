"""``python -m tools.simulate`` — synthetic calls through the whole product, no phone line needed.

    python -m tools.simulate --calls 200 [--front twilio|agi|both] [--agents 20] [--seed 1]

Starts what it needs when nothing is running (:mod:`.stack`: an embedded Redis unless ``REDIS_URL``
is set, SQLite tickets in a temp folder, the web app and the FastAGI server on 127.0.0.1, an rq
worker and the ticket writer in threads, the ACD timers), places N calls (:mod:`.callers`, :mod:`.run`):

- **Twilio** calls are signed webhooks over HTTP, exactly as Twilio sends them
  (``X-Twilio-Signature``); the app's Twilio REST client is given a simulated Twilio
  (:mod:`.twilio_rest`, :mod:`.twilio_cloud`) that answers REST requests and plays Twilio's part:
  agent legs ring, answer and hang up, the caller is moved into the conference, redirected to
  the survey, recordings are reported (:mod:`.twilio_callers`).
- **Asterisk** calls are FastAGI sessions over TCP (:mod:`.asterisk_pbx`): the ``agi_*``
  environment, ``200 result=`` replies, and the sample dialplan's continuation by
  ``HOTLINE_ACTION`` (queue_wait loops, Dial of the agent with ``transfer,answered`` /
  ``transfer,<DIALSTATUS>``, survey, the ``h`` extension, and ``[hotline-fallback]`` when an
  AGI fails).
- **Agents** (:mod:`.agents`) log in through the agent API (``/agent/api/login``), keep a
  heartbeat, answer when their endpoint rings (some never do, with ``--lazy-agents``), talk,
  and end wrap-up through the API; a share of Twilio calls are handed to the sub-center by a
  three-way transfer (``/agent/api/twilio/three-way`` then ``/leave``).
- **Callers** say what their matter is while waiting (Twilio speech results; Asterisk
  ``RECORD FILE`` writes a short WAV for the speech job), some give up and hang up, some
  press 1 for a callback (dialled by :mod:`.agents` through the rq worker), and an
  emergency share says emergency words (Twilio) or dials 110/119/120/122 (Asterisk).

Times are compressed (invitation after 1 s, callback offer after 3 s, ring timeout 2 s, talk
0.3-1.5 s). A progress bar goes to stderr; the report of every call and the KPIs go to stdout,
and the LAST line is one JSON object (:mod:`.figures`: ``calls``, ``connected``, ``lost``,
``tickets_missing``, ``p99_ms``, …). Exit code 0 when nothing was lost.

Everything listens on 127.0.0.1 only. See docs/simulate.md.
"""
from tools.simulate.agents import PASSWORD, SimAgent, SimCallbackDialer, callback_dialer  # noqa: F401  (as before)
from tools.simulate.asterisk_pbx import AGIRefused, SimAsterisk  # noqa: F401
from tools.simulate.callers import EMERGENCY_WORDS, LINES, MATTERS, CallRecord  # noqa: F401
from tools.simulate.figures import Stats, percentile, print_report  # noqa: F401
from tools.simulate.cli import main  # noqa: F401
from tools.simulate.run import Simulation  # noqa: F401
from tools.simulate.stack import ROOT  # noqa: F401
from tools.simulate.twilio_cloud import SimTwilio  # noqa: F401
from tools.simulate.twilio_rest import ACCOUNT, CONFERENCES, REST_EVENTS, TOKEN, SimHttpClient, web_app  # noqa: F401
