"""Every number through a real Asterisk 22: 12345, the 32 legacy numbers and an unknown number,
over Local channels with and without a DNID (the dialplan installed by agi_scripts/install.sh).

What is checked is what Asterisk did: the HOTLINE_* variables it set on the caller's channel
(VarSet), the prompt files it streamed and whether they played (AGIExecEnd), and, for retired
numbers after their window, that it hung up. The expected route is the pure router's answer for
the lab's rules at the moment of the call.
"""
from __future__ import annotations

import time

import pytest

from bench.asterisk_lab import wait_until
from call_routing.router import decide
from ivr.asterisk.agi import sound_of
from ivr.prompts import sound_path
from tests.pbx_world import AFTER_FORWARD, AFTER_HANGUP, BEFORE_WINDOW

pytestmark = pytest.mark.pbx

UNKNOWN = "12399"  # no such line: plain 12345


def numbers(world) -> list[str]:
    return ["12345", *sorted(world.rules.lines), UNKNOWN]


def expected(world, number: str) -> dict:
    d = decide(number, "13800138000", time.time(), None, world.rules)
    action = {"enqueue": "queue", "transfer": "transfer"}
    act = next((action[s["do"]] for s in d.steps if s["do"] in action), "hangup")
    prompts = [f for s in d.steps if s["do"] in ("say", "play") for f in sound_of(s, world.prompt_dir)]
    return {"line": d.line, "skill": d.skill or "", "action": act, "prompts": prompts}


def test_every_number_is_routed_as_its_own_line_by_the_real_pbx_with_and_without_dnid(pbx):
    world = pbx
    # all at once: every number over a Local channel without a DNID, and again through a trunk
    # context that sets one (the routing must not depend on it)
    calls = {(n, dnid): world.call(n, dnid=dnid) for dnid in (False, True) for n in numbers(world)}
    wrong = {}
    for (number, dnid), call in calls.items():
        want = expected(world, number)
        got = {"line": call.first_var("HOTLINE_LINE"), "skill": call.var("HOTLINE_SKILL"),
               "action": call.first_var("HOTLINE_ACTION")}
        if got != {k: want[k] for k in ("line", "skill", "action")}:
            wrong[(number, dnid)] = (got, want)
    assert not wrong, wrong
    # the legacy lines all differ from 12345: the bug this guards against routed them all as 12345
    assert len({c.first_var("HOTLINE_LINE") for c in calls.values()}) == len(world.rules.lines) + 1
    # prompts: every line's greeting, every merge line's transition prompt (or after-window notice) really played
    for (number, dnid), call in calls.items():
        want = expected(world, number)["prompts"]
        if want:
            wait_until(lambda: call.played()[: len(want)] == want or None, 30, 0.1,
                       f"the prompts of {number} to play")
    # retired numbers outside their window: before it a normal line (the greeting); after it the
    # notice, then the seats with the project's hold music (forward), or the end of the call
    before, forward, hangup = (calls[(n, False)] for n in (BEFORE_WINDOW, AFTER_FORWARD, AFTER_HANGUP))
    assert len(expected(world, AFTER_HANGUP)["prompts"]) == 1 and hangup.first_var("HOTLINE_ACTION") == "hangup"
    wait_until(lambda: hangup.hung_up(hangup.channel()), 10, 0.1, "the retired number to hang up")
    wait_until(lambda: "hotline" in forward.hold_music(), 10, 0.1, "hold music on the forwarded call")
    assert not forward.hung_up(forward.channel())
    first = [f for f, _ in before.streamed()][:1]  # the greeting, the line's only prompt
    assert first == [sound_path(world.prompt_dir, world.rules.hotline.greeting)]
    assert before.first_var("HOTLINE_ACTION") == "queue"


def test_a_prompt_edited_in_the_rules_is_rendered_by_the_fastagi_server_and_played(pbx):
    """An admin changes a transition prompt (the rules editor publishes it, or an edit on disk):
    the FastAGI server picks the rules up within a second and renders the new text into the
    prompts folder, so the next caller hears it — not silence until someone runs install.sh."""
    world = pbx
    path = world.rules_path
    shipped = path.read_text("utf-8")
    old = "prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，正在为您转接。"
    new = "prompt: 您拨打的12301旅游服务热线已并入12345政务服务便民热线，现在为您转接人工坐席。"
    assert old in shipped
    wav = sound_path(world.prompt_dir, new.split(": ", 1)[1]) + ".wav"
    try:
        path.write_text(shipped.replace(old, new), "utf-8")
        wait_until(lambda: __import__("os").path.exists(wav), 20, 0.1, "the new prompt to be rendered")
        world.seat("4101", {"tourism": 50, "general": 50})
        call = world.call("12301")
        call.bridged_with("Local/4101@lab-agent", timeout=30)
        assert wav[:-4] in call.played()
    finally:
        path.write_text(shipped, "utf-8")
