"""What callers hear besides the rules' own prompts (all rendered by ``python -m ivr.prompts``)."""
from __future__ import annotations

import math
from types import MappingProxyType

from call_routing.router import LANGUAGE

INVITE = "在等待期间，您可以简要说出您要反映的事项，坐席接听时就能看到。"
CALLBACK_OFFER = "如需预约回拨，请按1，您的排队位置不变；继续等待请不要挂机。"
CALLBACK_BOOKED = "已为您预约回拨，轮到您时我们会回拨这个号码，请保持电话畅通。再见。"
SURVEY = "请对本次服务进行评价：满意请按1，基本满意请按2，不满意请按3。"
SURVEY_THANKS = "感谢您的评价，再见。"
NEXT_IN_LINE = "您是下一位，请稍候。"
POSITION_HEAD, POSITION_MID, POSITION_TAIL = "您前面还有", "位，预计等待", "分钟。"
MANY_WAITING = "当前来电较多，预计等待"
SURVEY_SCORES = MappingProxyType({"1": "satisfied", "2": "basically_satisfied", "3": "dissatisfied"})
MAX_SPOKEN_NUMBER = 99

_DIGITS = "零一二三四五六七八九"


def spoken_number(n: int) -> str:
    """0..99 as Chinese a caller hears in a count: 2 -> 两, 12 -> 十二, 30 -> 三十."""
    n = max(0, min(int(n), MAX_SPOKEN_NUMBER))
    if n == 2:
        return "两"
    if n < 10:
        return _DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _DIGITS[tens]) + "十" + (_DIGITS[ones] if ones else "")


def fixed_prompts() -> list[str]:
    """Every text the flow itself may speak, as the prompt renderer must prepare it."""
    texts = [INVITE, CALLBACK_OFFER, CALLBACK_BOOKED, SURVEY, SURVEY_THANKS, NEXT_IN_LINE,
             POSITION_HEAD, POSITION_MID, POSITION_TAIL, MANY_WAITING]
    texts += [spoken_number(n) for n in range(1, MAX_SPOKEN_NUMBER + 1)]
    return list(dict.fromkeys(texts))


def _say(text: str, parts=None) -> dict:
    step = {"do": "say", "text": text, "language": LANGUAGE}
    if parts:
        step["parts"] = list(parts)
    return step


def position_announcement(position: int, wait_s: float) -> dict:
    """"您前面还有3位，预计等待1分钟" as one step whose ``parts`` are pre-rendered fragments."""
    minutes = max(1, math.ceil(wait_s / 60)) if wait_s else 1
    m = spoken_number(minutes)
    if position <= 0:
        return _say(NEXT_IN_LINE)
    if position > MAX_SPOKEN_NUMBER:
        parts = (MANY_WAITING, m, POSITION_TAIL)
    else:
        parts = (POSITION_HEAD, spoken_number(position), POSITION_MID, m, POSITION_TAIL)
    return _say("".join(parts), parts)
