"""ivr.asterisk.pbx.PhoneWatcher without a PBX: device state events move seats, and an event costs no
read of every seat (Asterisk reports every call's channels: at 500 calls that read kept the
watcher minutes behind — bench/asterisk.py, docs/asterisk.md)."""
from __future__ import annotations

from acd_support import make_acd, seat

from ivr.asterisk.pbx import PhoneWatcher


def test_device_events_pause_and_free_seats_from_the_sweeps_index_without_reading_every_seat(redis_url, rules):
    acd = make_acd(redis_url, rules)
    seat(acd, "1001", {"general": 50}, endpoints=("PJSIP/agent1001",))
    seat(acd, "1002", {"general": 50}, endpoints=("PJSIP/agent1002/sip:agent1002@10.0.0.2",))
    watcher = PhoneWatcher(acd)
    watcher.sweep()
    reads = []
    watcher._seats = lambda: reads.append(1) or {}  # events must not read every seat

    watcher._event({"Event": "DeviceStateChange", "Device": "Local/12345@hotline-in", "State": "INUSE"})
    assert acd.agent("1001")["state"] == acd.agent("1002")["state"] == "ready"
    watcher._event({"Event": "DeviceStateChange", "Device": "PJSIP/agent1002", "State": "INUSE"})
    assert (acd.agent("1002")["state"], acd.agent("1002")["reason"]) == ("paused", "phone-busy")
    assert acd.agent("1001")["state"] == "ready"
    watcher._event({"Event": "DeviceStateChange", "Device": "PJSIP/agent1002", "State": "NOT_INUSE"})
    assert acd.agent("1002")["state"] == "ready"
    assert reads == []
