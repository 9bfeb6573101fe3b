"""survey: after the agent hangs up, the caller rates the service (1 满意, 2 基本满意, 3 不满意).

``AGI(agi://127.0.0.1:4573/survey,${HOTLINE_CALL_ID})``. The score goes on the ticket and
into the KPIs; no key within the timeout is recorded as no answer. Ends with ``hangup``.
"""
from __future__ import annotations

from ivr.asterisk.agi import hand_back, play_steps


def handler(session) -> None:
    call_id = session.call_id_from_args()
    agi, flow = session.agi, session.flow
    question = flow.survey_question(call_id)
    keys = question.listen["digits"]
    digit = play_steps(agi, question.steps, session.services.prompt_dir, keys)
    if not digit:
        digit = agi.wait_digit(int(question.listen["timeout_s"] * 1000))
    turn = flow.survey(call_id, digit if digit in keys else "")
    hand_back(agi, turn)
    play_steps(agi, turn.steps, session.services.prompt_dir)
