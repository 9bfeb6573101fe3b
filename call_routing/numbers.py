"""Telephone numbers as carriers send them, and as logs may show them.

Carriers and PBXs hand us the dialed number in many shapes: ``+8612301``, ``008612301``,
``8612301``, ``sip:12301@host``, ``tel:12301``, with a city's area code (``02112345``,
``+86 21 12345``), with spaces or dashes. :func:`service_number` reduces any of them to the
short service number the rules know, or returns the bare digits when it is none of them.
"""
from __future__ import annotations

import re

_NON_DIGIT = re.compile(r"\D")


def digits_of(raw: str) -> str:
    """The digits a caller or carrier meant, from a phone number, tel: or sip: URI."""
    if not raw:
        return ""
    text = str(raw).strip()
    lower = text.lower()
    if lower.startswith(("sip:", "sips:", "tel:")):
        text = text.split(":", 1)[1]
        text = text.split("@", 1)[0].split(";", 1)[0]
    return _NON_DIGIT.sub("", text)


def service_number(raw: str, known) -> str:
    """The service number in ``known`` that ``raw`` dials, else its plain digits.

    ``known`` is a set (or dict) of short numbers. International prefixes (+86, 0086, 86)
    and a city's area code (0 + 2–3 digits, or 2–3 digits after +86) are removed only when
    what remains is a known number, so an ordinary subscriber number is never mangled.
    """
    digits = digits_of(raw)
    if digits in known:
        return digits
    national = None
    if digits.startswith("0086"):
        national = digits[4:]
    elif digits.startswith("86") and len(digits) > 5:
        national = digits[2:]
    if national is not None:
        if national in known:
            return national
        # after +86 the area code has no trunk 0: +86 21 12345, +86 755 12345
        for cut in (2, 3):
            if national[cut:] in known and national[0] != "0":
                return national[cut:]
        digits_for_area = national
    else:
        digits_for_area = digits
    if digits_for_area.startswith("0"):
        # trunk 0 + area code: 010/02x are 3 digits, the rest 4 (0755, 0571)
        for cut in (3, 4):
            if digits_for_area[cut:] in known:
                return digits_for_area[cut:]
    return national if national else digits


def mask(raw: str | None) -> str:
    """A caller number fit for logs: enough to tell calls apart, not enough to call back.

    ``13812345678`` → ``138****5678``; short numbers keep only their last two digits.
    """
    if not raw:
        return "unknown"
    digits = digits_of(raw)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:  # +86 mobile
        digits = digits[2:]
    if len(digits) >= 11:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) >= 7:
        return "*" * (len(digits) - 4) + digits[-4:]
    if len(digits) > 2:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "**"
