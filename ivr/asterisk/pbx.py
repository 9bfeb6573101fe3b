"""Asterisk from outside the calls, over AMI (``HOTLINE_AMI=ami://hotline:SECRET@127.0.0.1:5038``).

- :class:`PhoneWatcher` — whether each seat's phone can ring, as Asterisk sees it (device state
  of the seat's endpoint: ``PJSIP/agent1001`` is UNAVAILABLE when its contact is not
  registered, INUSE/RINGING/BUSY when it is on another call). A ready seat whose phone cannot
  ring is paused (``phone-offline`` / ``phone-busy``) so the ACD never offers it a call, and made
  ready again when its phone is back; a seat logging in with its phone offline starts paused
  (:meth:`call_routing.acd.ACD.login`). Runs in the FastAGI server when ``HOTLINE_AMI`` is set.
- :class:`AsteriskSwitchboard` — the agent console's three-way transfers on Asterisk: the same
  flow decisions as the phone's ``*3``/``*4`` (:mod:`agi_scripts.threeway`), carried out by moving
  the caller into the call's conference from outside (AMI Redirect; the agent's leg follows
  through the Dial's F option), ringing the party into it (AMI Originate) and hanging it up or
  kicking the agent out of it (cancel, leave).
"""
from __future__ import annotations

import logging
import os
import threading
from urllib.parse import unquote, urlsplit

from call_routing.acd.core import PHONE_BUSY, PHONE_OFFLINE, PHONE_STATE_TTL_S

from ivr.asterisk.ami import AMI, AMIError

log = logging.getLogger("hotline.pbx")

AMI_ENV = "HOTLINE_AMI"
#: Asterisk device states -> can the seat's phone take a call
DEVICE_STATES = {
    "UNAVAILABLE": PHONE_OFFLINE, "INVALID": PHONE_OFFLINE,
    "INUSE": PHONE_BUSY, "BUSY": PHONE_BUSY, "RINGING": PHONE_BUSY, "RINGINUSE": PHONE_BUSY, "ONHOLD": PHONE_BUSY,
    "NOT_INUSE": None, "UNKNOWN": None,
}


def ami_url(url: str | None = None) -> str | None:
    return url or os.environ.get(AMI_ENV) or None


def connect(url: str | None = None, events: bool = False, timeout: float = 5.0) -> AMI:
    """An AMI connection from ``ami://USER:SECRET@HOST:PORT`` (``HOTLINE_AMI``)."""
    url = ami_url(url)
    if not url:
        raise AMIError(f"no Asterisk manager configured: set {AMI_ENV}=ami://USER:SECRET@HOST:5038")
    u = urlsplit(url)
    if u.scheme != "ami" or not u.hostname or not u.username:
        raise AMIError(f"{AMI_ENV} must look like ami://USER:SECRET@HOST:PORT")
    return AMI.connect(u.hostname, u.port or 5038, unquote(u.username), unquote(u.password or ""),
                       timeout=timeout, events=events)


class PhoneWatcher:
    """Keeps the ACD's seats in step with their phones (see the module's docstring)."""

    def __init__(self, acd, url: str | None = None, sweep_s: float = 2.0):
        self.acd = acd
        self.url = url
        self.sweep_s = sweep_s
        self.devices: dict[str, str | None] = {}  # device -> PHONE_OFFLINE | PHONE_BUSY | None (free)
        self._lock = threading.Lock()
        # device -> the seats on it, as of the last sweep: an event costs no read of every seat
        # (Asterisk reports every call's Local channels too; at 500 calls and 125 seats reading
        # them all per event kept the watcher minutes behind, pausing seats on stale states)
        self._seats_on: dict[str, list[str]] = {}

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: connect, follow device state events, sweep every seat; reconnect on loss."""
        backoff = 1.0
        while not stop.is_set():
            try:
                ami = connect(self.url, events=True)
            except (OSError, AMIError) as exc:
                log.error("cannot reach the Asterisk manager (%s); seats' phones unknown, retrying", exc)
                stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            backoff = 1.0
            try:
                ami.on_event(self._event)
                _, listed = ami.action_list("DeviceStateList")
                for e in listed:
                    self._note(e.get("Device", ""), e.get("State", ""))
                while not stop.is_set() and not ami.closed.is_set():
                    self.sweep()
                    stop.wait(self.sweep_s)
            except Exception:  # never let the watcher die: the next connection starts over
                log.exception("phone watcher failed; reconnecting")
            finally:
                ami.close()
            if not stop.is_set():
                log.warning("Asterisk manager connection lost; reconnecting")
                stop.wait(1.0)

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="phone-watcher", daemon=True).start()
        return stop

    def _event(self, event: dict) -> None:
        if event.get("Event") == "DeviceStateChange":
            device = event.get("Device", "")
            self._note(device, event.get("State", ""))
            for agent_id in self._seats_on.get(device, ()):
                self._apply(agent_id)

    def _note(self, device: str, state: str) -> None:
        if device:
            with self._lock:
                self.devices[device] = DEVICE_STATES.get(state.upper())

    # -- seats -------------------------------------------------------------------------------------
    def _seats(self) -> dict[str, list[str]]:
        """agent id -> the devices of their endpoints (``PJSIP/agent1001``; Dial options dropped)."""
        out = {}
        r, k = self.acd.redis, self.acd.keys
        for raw in r.smembers(k.agents()):
            agent_id = raw.decode() if isinstance(raw, bytes) else raw
            agent = self.acd.agent(agent_id)
            if agent:
                out[agent_id] = [device_of(e) for e in agent["endpoints"]]
        return out

    def sweep(self) -> None:
        seats = self._seats()
        seats_on: dict[str, list[str]] = {}
        for agent_id, devices in seats.items():
            for device in devices:
                seats_on.setdefault(device, []).append(agent_id)
        self._seats_on = seats_on
        for agent_id in seats:
            self._apply(agent_id)

    def _apply(self, agent_id: str) -> None:
        agent = self.acd.agent(agent_id)
        if not agent or not agent["endpoints"]:
            return
        with self._lock:
            known = [self.devices[d] for d in map(device_of, agent["endpoints"]) if d in self.devices]
        if not known:
            return  # not a device Asterisk reports on (a Local channel, a trunk): nothing to say
        # the seat's first endpoint is the one the dialplan rings
        phone = known[0]
        key = self.acd.keys.phone(agent_id)
        if phone:
            self.acd.redis.set(key, phone, ex=PHONE_STATE_TTL_S)
        else:
            self.acd.redis.delete(key)
        state, reason = agent["state"], agent["reason"]
        if phone and state == "ready":
            self.acd.pause(agent_id, phone)
            log.info("seat %s paused: %s", agent_id, phone)
        elif phone == PHONE_OFFLINE and state == "paused" and reason == PHONE_BUSY:
            self.acd.pause(agent_id, phone)
        elif not phone and state == "paused" and reason in (PHONE_OFFLINE, PHONE_BUSY):
            self.acd.ready(agent_id)
            log.info("seat %s ready again: its phone is back", agent_id)


def device_of(endpoint: str) -> str:
    """``PJSIP/agent1001/sip:…`` or ``PJSIP/agent1001`` -> ``PJSIP/agent1001`` (Asterisk's device)."""
    tech, _, rest = endpoint.partition("/")
    return f"{tech}/{rest.split('/', 1)[0].split(',', 1)[0]}" if rest else endpoint


def run_in_background(acd) -> threading.Event | None:
    """Start the watcher when ``HOTLINE_AMI`` is set (the FastAGI server calls this)."""
    if not ami_url():
        return None
    log.info("following agents' phones through the Asterisk manager")
    return PhoneWatcher(acd).start()


# -- the agent console's transfers ------------------------------------------------------------------
class SwitchboardError(RuntimeError):
    """The PBX could not do what the agent asked (nothing changed for the caller); its text is
    what the agent reads."""


UNREACHABLE = "电话交换机（Asterisk）暂时连不上，请稍后再试；一直如此请联系管理员"


class AsteriskSwitchboard:
    """Three-way transfers started in the agent console, for calls that came through Asterisk."""

    def __init__(self, flow, url: str | None = None, ring_s: int = 20):
        self.flow = flow
        self.url = url
        self.ring_s = ring_s

    def knows(self, call_id: str) -> bool:
        try:
            return bool(self.flow.state(call_id).channel)
        except LookupError:
            return False

    def _ami(self) -> AMI:
        try:
            return connect(self.url)
        except (OSError, AMIError) as exc:  # the engineer's detail in the log, the agent's in words
            log.error("the Asterisk manager cannot be reached: %s", exc)
            raise SwitchboardError(UNREACHABLE) from exc

    def start_three_way(self, call_id: str, kind: str) -> dict:
        """``kind`` subcenter | expert: reserve through the flow, then move the call on the PBX."""
        call = self.flow.state(call_id)
        if not call.channel or not call.agent_channel:
            raise SwitchboardError("这通电话不在电话交换机上，无法三方转接")
        turn = self.flow.three_way(call_id, kind)
        if turn.action != "transfer":
            return {"status": "refused", "reason": turn.reason}
        try:
            with self._ami() as ami:
                in_conference = ami.action("Getvar", Channel=call.channel,
                                           Variable="HOTLINE_CONF_ROLE").get("Value") == "caller"
                if not in_conference:
                    # the agent's leg follows the caller out of their bridge (Dial's F option)
                    ami.action("Setvar", Channel=call.agent_channel, Variable="HOTLINE_CONF_JOIN", Value=call_id)
                ami.action("Originate", Channel=f"Local/{call_id}@hotline-party/n", Context="hotline-conf",
                           Exten="party", Priority=1, Async="true", Timeout=(self.ring_s + 15) * 1000,
                           CallerID="12345")
                if not in_conference:
                    ami.action("Redirect", Channel=call.channel, Context="hotline-conf", Exten="caller", Priority=1)
        except (OSError, AMIError, SwitchboardError) as exc:  # nothing rang: the reservation goes back
            self.flow.three_way_cancel(call_id, "ring-failed")
            log.error("call %s: the three-way transfer could not be started: %s", call_id, exc)
            raise SwitchboardError(str(exc) if isinstance(exc, SwitchboardError) else "转接未能发起，请稍后再试") from exc
        return {"status": "ringing", "kind": kind, "party": turn.party}

    def cancel(self, call_id: str) -> dict:
        """Drop the party (the caller stays with the agent)."""
        turn = self.flow.three_way_cancel(call_id)
        if turn.reason == "cancelled":
            self._hang_up_party(call_id)
        return {"status": turn.reason}

    def leave(self, call_id: str) -> dict:
        """The agent drops out: the caller goes on with the party (warm transfer). The agent's
        conference leg ends; its hangup handler tells the flow (``agent-left``)."""
        call = self.flow.state(call_id)
        if call.three_way_state != "joined":
            raise SwitchboardError("对方尚未接通，不能退出（可以取消转接）")
        try:
            with self._ami() as ami:
                ami.action("ConfbridgeKick", Conference=f"hotline-{call_id}", Channel=call.agent_channel)
        except (OSError, AMIError) as exc:
            log.error("call %s: the agent could not leave the three-way call: %s", call_id, exc)
            raise SwitchboardError("退出三方未成功，请稍后再试") from exc
        return {"status": "left"}

    def _hang_up_party(self, call_id: str) -> None:
        try:
            with self._ami() as ami:
                ami.action("Hangup", Channel=f"/^Local\\/{call_id}@hotline-party-/")
        except (OSError, AMIError) as exc:
            log.error("call %s: the party's leg could not be hung up: %s", call_id, exc)

    def state(self, call_id: str) -> dict | None:
        try:
            call = self.flow.state(call_id)
        except LookupError:
            return None
        if not call.three_way_state:
            return None
        return {"transfer_state": call.three_way_state, "transfer_mode": "three_way",
                "transfer_target": call.three_way, "transfer_agent": call.expert}
