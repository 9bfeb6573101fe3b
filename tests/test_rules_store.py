"""Admins edit transfer_rules.yaml while calls flow: good edits are picked up, bad ones never are."""
from __future__ import annotations

import shutil

import pytest

from call_routing.router import decide
from call_routing.rules import RulesError
from call_routing.rules_store import RulesStore


class FakeClock:
    """Monotonic time the test moves by hand, so no test sleeps."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def live_rules(tmp_path, rules_path):
    shutil.copy(rules_path, tmp_path / "transfer_rules.yaml")
    shutil.copy(rules_path.parent / "emergency_keywords.yaml", tmp_path / "emergency_keywords.yaml")
    return tmp_path / "transfer_rules.yaml"


def rewrite(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_valid_edit_is_routed_with_within_the_check_interval(live_rules):
    clock = FakeClock()
    store = RulesStore(live_rules, check_interval=1.0, clock=clock)
    old = store.current()
    rewrite(live_rules, "您拨打的12301旅游服务热线已并入", "您拨打的12301文旅热线已并入")
    assert store.current() is old  # not yet checked again
    clock.now += 1.0
    new = store.current()
    assert new.version != old.version
    assert "文旅热线" in decide("12301", None, 1717200000, None, new).steps[0]["text"]


def test_a_call_in_flight_keeps_the_version_it_started_with(live_rules):
    clock = FakeClock()
    store = RulesStore(live_rules, clock=clock)
    started_with = store.current()
    rewrite(live_rules, "skill: general           #", "skill: science_tech           #")
    clock.now += 2
    assert store.current().hotline.skill == "science_tech"
    assert started_with.hotline.skill == "general"  # the running call's rules object is untouched


def test_an_invalid_edit_never_replaces_the_running_rules(live_rules, caplog):
    clock = FakeClock()
    store = RulesStore(live_rules, clock=clock)
    good = store.current()
    rewrite(live_rules, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    clock.now += 2
    with caplog.at_level("ERROR", logger="hotline.rules"):
        assert store.current() is good
    assert any("lines.12348.mode" in str(p) for p in store.last_problems)
    assert "still routing with version " + good.version in caplog.text


def test_an_edit_to_the_keyword_file_is_picked_up_too(live_rules):
    clock = FakeClock()
    store = RulesStore(live_rules, clock=clock)
    assert decide("12345", None, None, "有人在放鞭炮伤人", store.current()).mode == "main"
    rewrite(live_rules.parent / "emergency_keywords.yaml", "[报警,", "[报警, 放鞭炮伤人,")
    clock.now += 2
    assert decide("12345", None, None, "有人在放鞭炮伤人", store.current()).emergency == "110"


def test_a_store_cannot_start_on_an_invalid_file(live_rules):
    rewrite(live_rules, "    mode: dual\n    skill: legal", "    mode: duel\n    skill: legal")
    with pytest.raises(RulesError, match="lines.12348.mode"):
        RulesStore(live_rules)
