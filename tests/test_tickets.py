"""The ticket store: lifecycle, working-day deadlines, links, supervision, masking.

Runs against SQLite always and PostgreSQL when reachable (tests/ticket_db.py).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest

from call_routing.rules import CHINA_TZ
from intake.tickets import ExtensionRefused, TicketError, TicketPolicy, TicketStore
from ticket_db import fresh_schema, postgres_reachable, postgres_url

T0 = datetime(2025, 9, 30, 10, 0, tzinfo=CHINA_TZ)  # the Tuesday before National Day 2025
CALLER = "13812345678"


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_factory(request, tmp_path):
    made = []

    def make(policy: TicketPolicy | None = None, at: datetime = T0) -> TicketStore:
        clock = Clock(at)
        if request.param == "sqlite":
            store = TicketStore(f"sqlite:///{tmp_path}/tickets-{len(made)}.db", policy=policy, clock=clock)
        else:
            why = postgres_reachable()
            if why:
                pytest.skip(why)
            store = TicketStore(postgres_url(), schema=fresh_schema(), policy=policy, clock=clock)
        made.append(store)
        return store

    yield make
    for store in made:
        if store.schema:
            store.drop_tables()
        store.close()


@pytest.fixture
def store(store_factory):
    return store_factory()


def prefill(**over) -> dict:
    fields = {"type": "help", "line": "12345", "skill": "general", "department": "12345政务服务便民热线",
              "emergency": None, "enterprise": False, "location": "阳光小区", "unit": None, "subject": "暖气",
              "numbers": {"id_cards": [], "phones": [], "amounts": []}}
    fields.update(over)
    return fields


def test_a_call_gets_one_ticket_even_when_the_front_end_opens_it_twice(store):
    first = store.open_ticket("call-1", "12345", CALLER, rules_version="v1", recording="rec/call-1.wav")
    again = store.open_ticket("call-1", "12345", CALLER)
    assert again.id == first.id
    assert first.status == "open" and first.transcript_status == "pending"
    assert first.rules_version == "v1" and first.recording == "rec/call-1.wav"


def test_prefilled_fields_stay_marked_machine_filled_until_an_agent_confirms_them(store):
    t = store.open_ticket("call-1", "12345", CALLER)
    t = store.attach_transcript("call-1", text="阳光小区暖气一直不热", confidence=0.82, prefill=prefill())
    assert t.status == "open" and t.transcript_confidence == pytest.approx(0.82)
    assert all(e["source"] == "machine" and not e["confirmed"] for e in t.fields.values())
    assert set(t.unconfirmed) == set(t.fields)
    t = store.confirm_fields(t.id, "agent007", edits={"location": "阳光小区3号楼"})
    assert t.status == "confirmed" and t.unconfirmed == []
    assert t.fields["location"] == {**t.fields["location"], "value": "阳光小区3号楼", "source": "agent"}
    assert t.fields["type"]["source"] == "machine" and t.fields["type"]["by"] == "agent007"
    kinds = [e["kind"] for e in store.events(t.id)]
    assert kinds == ["opened", "prefilled", "confirmed"]


def test_a_late_transcript_never_overwrites_what_an_agent_typed(store):
    t = store.open_ticket("call-1", "12345", CALLER)
    store.flag_manual_entry("call-1", "speech queue was slow")
    store.confirm_fields(t.id, "agent007", edits={"type": "complaint", "line": "12319"})
    t = store.attach_transcript("call-1", text="小区暖气不热", prefill=prefill(type="help", line="12345"))
    assert t.value("type") == "complaint" and t.value("line") == "12319"
    assert t.fields["location"]["source"] == "machine"


def test_words_heard_live_are_kept_when_the_recording_of_the_matter_is_transcribed_later(store):
    store.open_ticket("call-1", "12345", CALLER)
    store.append_transcript("call-1", "楼道里有烟，好像是302着火了", source="audiosocket")
    t = store.attach_transcript("call-1", text="楼道里有", status="ok", recording="rec/call-1.wav")
    assert t.transcript == "楼道里有烟，好像是302着火了" and t.recording == "rec/call-1.wav"
    assert [e["kind"] for e in store.events(t.id)][-1] == "recording_kept"
    store.open_ticket("call-2", "12345", CALLER)  # nothing heard live: the recording's words are the transcript
    t = store.attach_transcript("call-2", text="路灯坏了", status="ok", recording="rec/call-2.wav")
    assert t.transcript == "路灯坏了"


@pytest.mark.parametrize("status,text,reason", [
    ("no_model", None, "no speech model"),
    ("unreadable", None, "could not be read"),
    ("ok", "   ", "nothing was recognised"),
])
def test_a_call_without_a_usable_transcript_is_flagged_for_manual_entry(store, status, text, reason):
    store.open_ticket("call-1", "12366", CALLER, recording="rec/call-1.wav")
    t = store.attach_transcript("call-1", text=text, status=status)
    assert t.status == "manual_entry" and reason in t.manual_reason
    assert t.recording == "rec/call-1.wav" and t.fields == {}
    t = store.confirm_fields(t.id, "agent007", edits=prefill(type="consultation", line="12366"))
    assert t.status == "confirmed"


def test_deadlines_count_working_days_across_the_national_day_holiday(store):
    t = store.open_ticket("call-1", "12345", CALLER)
    assert t.contact_due == T0 + timedelta(hours=1)
    # Oct 1-8 are off, Saturday Oct 11 is a make-up working day: the 5th working day is Oct 14
    assert t.due_at == datetime(2025, 10, 14, 10, 0, tzinfo=CHINA_TZ)
    assert store.overdue_contact(T0 + timedelta(minutes=59)) == []
    assert [x.id for x in store.overdue_contact(T0 + timedelta(minutes=61))] == [t.id]
    store.record_contact(t.id, "agent007")
    assert store.overdue_contact(T0 + timedelta(hours=2)) == []


def test_an_enterprise_request_gets_fifteen_working_days_and_an_agent_can_change_that(store):
    store.open_ticket("call-1", "12366", CALLER)
    t = store.attach_transcript("call-1", text="我们公司想咨询增值税发票", prefill=prefill(enterprise=True))
    assert t.due_at == datetime(2025, 10, 28, 10, 0, tzinfo=CHINA_TZ)
    t = store.confirm_fields(t.id, "agent007", edits={"enterprise": False})
    assert t.due_at == datetime(2025, 10, 14, 10, 0, tzinfo=CHINA_TZ)


def test_extensions_are_granted_up_to_ten_working_days_and_refused_beyond(store):
    t = store.open_ticket("call-1", "12345", CALLER)
    t = store.extend(t.id, 6, "needs a site visit", by="supervisor1")
    assert t.extension_days == 6
    t = store.extend(t.id, 4, "the unit asked for more time", by="supervisor1")
    assert t.due_at == datetime(2025, 10, 28, 10, 0, tzinfo=CHINA_TZ)
    with pytest.raises(ExtensionRefused, match="limit is 10"):
        store.extend(t.id, 1, "one more day", by="supervisor1")
    with pytest.raises(ExtensionRefused, match="reason"):
        store.extend(t.id, 1, " ", by="supervisor1")
    assert store.get(t.id).extension_days == 10


def test_the_same_caller_on_the_same_matter_within_the_window_is_linked_to_the_first_ticket(store_factory):
    store = store_factory(TicketPolicy(link_window=timedelta(hours=24)))
    first = store.open_ticket("call-1", "12345", CALLER)
    store.attach_transcript("call-1", text="阳光小区暖气不热", prefill=prefill())
    store.clock.at = T0 + timedelta(hours=3)
    store.open_ticket("call-2", "12345", CALLER)
    second = store.attach_transcript("call-2", text="阳光小区暖气还是不热", prefill=prefill())
    store.open_ticket("call-3", "12345", "13900000000")
    other_caller = store.attach_transcript("call-3", text="阳光小区暖气不热", prefill=prefill())
    store.open_ticket("call-4", "12345", CALLER)
    other_matter = store.attach_transcript("call-4", text="幸福路路灯坏了", prefill=prefill(location="幸福路"))
    store.clock.at = T0 + timedelta(hours=30)
    store.open_ticket("call-5", "12345", CALLER)
    later = store.attach_transcript("call-5", text="阳光小区暖气不热", prefill=prefill())
    assert second.linked_to == first.id
    assert other_caller.linked_to is None and other_matter.linked_to is None
    assert later.linked_to is None  # a day later it is a new ticket, not a duplicate


def test_ten_callers_on_the_same_matter_raise_a_supervision_flag_on_all_their_tickets(store):
    ids = []
    for i in range(10):
        store.clock.at = T0 + timedelta(minutes=i)
        store.open_ticket(f"call-{i}", "12345", f"139000000{i:02d}")
        t = store.attach_transcript(f"call-{i}", text="阳光小区停暖气了", prefill=prefill())
        ids.append(t.id)
        if i == 8:
            assert not t.supervision and store.supervisions() == []
    assert all(store.get(i).supervision for i in ids)
    [flag] = store.supervisions()
    assert flag["kind"] == "matter" and flag["callers"] == 10 and flag["ticket_ids"] == ids


def test_ten_callers_about_the_same_unit_raise_a_supervision_flag(store):
    for i in range(10):
        store.open_ticket(f"call-{i}", "12315", f"139000000{i:02d}")
        store.attach_transcript(f"call-{i}", text="…", prefill=prefill(
            type="complaint", line="12315", location=None, subject=f"问题{i}", unit="美丽健身房"))
    flags = store.supervisions()
    assert [(f["kind"], f["key"], f["callers"]) for f in flags] == [("unit", "美丽健身房", 10)]


def test_questions_from_many_callers_do_not_raise_supervision(store):
    for i in range(12):
        store.open_ticket(f"call-{i}", "12366", f"139000000{i:02d}")
        store.attach_transcript(f"call-{i}", text="个税怎么算", prefill=prefill(
            type="consultation", line="12366", location=None, subject="个税"))
    assert store.supervisions() == []


def test_the_caller_number_is_masked_for_roles_that_must_not_see_it(store):
    store.open_ticket("call-1", "12345", CALLER)
    t = store.attach_transcript("call-1", text="我的电话是13912345678，身份证110101199003074514",
                                prefill=prefill(numbers={"phones": ["13912345678"],
                                                         "id_cards": ["110101199003074514"], "amounts": []}))
    agent = t.view("agent")
    assert agent["caller"] == CALLER and "13912345678" in agent["transcript"]
    for role in ("department", "viewer", "admin"):
        view = t.view(role)
        text = repr(view)
        assert view["caller"] == "138****5678"
        assert CALLER not in text and "13912345678" not in text and "110101199003074514" not in text
    assert CALLER not in repr(t)


def test_the_caller_number_never_reaches_the_logs(store, caplog):
    caplog.set_level(logging.DEBUG, logger="hotline")
    store.open_ticket("call-1", "12345", CALLER)
    store.attach_transcript("call-1", text=None, status="unreadable")
    assert "138****5678" in caplog.text and CALLER not in caplog.text


def test_only_a_confirmed_ticket_can_be_finished_and_only_a_finished_one_handed_off(store):
    t = store.open_ticket("call-1", "12345", CALLER)
    t = store.attach_transcript("call-1", text="阳光小区暖气不热", prefill=prefill())
    with pytest.raises(TicketError, match="not confirmed"):
        store.finish(t.id, "agent007", "heating company fixed the valve")
    with pytest.raises(TicketError, match="only a finished ticket"):
        store.mark_handed_off(t.id, "SR-1")
    store.confirm_fields(t.id, "agent007")
    t = store.finish(t.id, "agent007", "heating company fixed the valve")
    assert t.status == "finished" and t.finished_at is not None
    with pytest.raises(TicketError, match="no longer be edited"):
        store.confirm_fields(t.id, "agent007", edits={"type": "complaint"})
    t = store.mark_handed_off(t.id, "SR-1")
    assert t.status == "handed_off" and t.handoff_ref == "SR-1"


def test_an_agent_moving_a_ticket_to_another_line_brings_that_lines_skill_and_department(store, rules):
    store.open_ticket("call-1", "12345", CALLER)
    t = store.attach_transcript("call-1", text="公积金怎么提取", prefill=prefill(type="consultation"))
    t = store.confirm_fields(t.id, "agent007", edits={"line": "12329"}, rules=rules)
    assert (t.value("skill"), t.value("department")) == ("housing_fund", "住房城乡建设部")
    with pytest.raises(TicketError, match="not a hotline"):
        store.confirm_fields(t.id, "agent007", edits={"line": "99999"}, rules=rules)
    with pytest.raises(TicketError, match="unknown field"):
        store.confirm_fields(t.id, "agent007", edits={"colour": "blue"})


def test_every_survey_answer_the_caller_can_give_is_kept_on_the_ticket(store):
    from ivr.flow import SURVEY_SCORES
    from intake.jobs import CallTickets

    port = CallTickets(store)
    for digit, score in SURVEY_SCORES.items():
        t = store.open_ticket(f"call-survey-{digit}", "12345", CALLER)
        port.survey(str(t.id), score)
        assert store.get(t.id).survey == score  # PostgreSQL refuses values longer than the column


def test_the_ticket_list_search_filters_counts_and_pages_newest_first(store):
    from datetime import date

    for i in range(12):  # one ticket every two hours from T0 (Tuesday 30 September, 10:00 China time)
        store.clock.at = T0 + timedelta(hours=2 * i)
        store.open_ticket(f"call-{i}", "12301" if i % 3 == 0 else "12345", f"+86139000000{i:02d}")
        store.attach_transcript(f"call-{i}", text="暖气", prefill=prefill(type="complaint" if i % 2 else "help"))
    found, total = store.search(page=1, per_page=5)
    assert total == 12 and [t.call_id for t in found] == [f"call-{i}" for i in (11, 10, 9, 8, 7)]
    assert [t.call_id for t in store.search(page=3, per_page=5)[0]] == ["call-1", "call-0"]
    assert store.search(day=date(2025, 9, 30))[1] == 7  # 10:00 to 22:00 China time, not UTC's day
    assert store.search(day=date(2025, 10, 1))[1] == 5
    assert store.search(line="12301")[1] == 4 and store.search(request_type="complaint")[1] == 6
    assert [t.call_id for t in store.search(caller_digits="0007")[0]] == ["call-7"]
    assert store.search(ticket_id=found[0].id)[0][0].call_id == "call-11"
    assert store.search(status="open")[1] == 12 and store.search(status="finished")[1] == 0
    assert store.search(supervision=True)[1] == 12  # ten callers or more on the same matter
    assert store.search(overdue=True, at=T0 + timedelta(days=30))[1] == 12
    assert store.search(overdue=True, at=T0 + timedelta(days=1))[1] == 0
    assert len(store.search(per_page=10_000)[0]) == 12  # bounded by MAX_PAGE_SIZE, not refused
    with pytest.raises(TicketError):
        store.search(caller_digits="12%")
