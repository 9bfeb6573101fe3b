"""The agent's WebRTC softphone: the agent console registers to the site's Asterisk over SIP on a
WebSocket (JsSIP, static/vendor/jssip.min.js) as the seat's own PJSIP endpoint, so an agent takes
calls in the browser (docs/asterisk.md, "Softphone in the agent console").

Settings (app config or environment):

* ``SOFTPHONE_WS_URL`` — Asterisk's SIP WebSocket, ``wss://pbx.example.cn:8089/ws``; unset: no
  softphone anywhere.
* ``SOFTPHONE_SECRET`` — each seat's SIP password is derived from it and the seat's endpoint
  name, so the console and Asterisk's pjsip.conf agree without a password store
  (``python -m consoles.softphone pjsip SEAT…`` writes the endpoints with those passwords).
* ``SOFTPHONE_SIP_DOMAIN`` — the domain of the seats' SIP addresses (default: the URL's host).

A seat has a softphone when one of its endpoints is ``PJSIP/<name>`` (the Dial string the ACD
rings): ``<name>`` is its SIP user name, auth and AOR.

    python -m consoles.softphone pjsip SEAT [SEAT…] [--context hotline-agents]
                                 [--dtls-cert FILE --dtls-key FILE]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import sys
from urllib.parse import urlsplit

SETTINGS = ("SOFTPHONE_WS_URL", "SOFTPHONE_SECRET", "SOFTPHONE_SIP_DOMAIN")
MIN_SECRET_CHARS = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SoftphoneError(ValueError):
    """A softphone setting or seat that cannot work, worded for the admin."""


def endpoint_name(endpoints) -> str | None:
    """The seat's PJSIP endpoint (``PJSIP/agent1001`` → ``agent1001``), or None."""
    for e in endpoints or ():
        if e.startswith("PJSIP/") and _NAME.fullmatch(e[len("PJSIP/"):]):
            return e[len("PJSIP/"):]
    return None


def sip_password(secret: str, name: str) -> str:
    """The SIP password of endpoint ``name``: HMAC-SHA256 of the name under the secret, 24 characters."""
    digest = hmac.new(secret.encode(), f"softphone:{name}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:24]


def check(settings: dict) -> dict | None:
    """The softphone's settings when configured, else None; SoftphoneError naming a bad one."""
    url = (settings.get("SOFTPHONE_WS_URL") or "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise SoftphoneError(f"SOFTPHONE_WS_URL must be a ws:// or wss:// URL of Asterisk's SIP WebSocket "
                             f"(e.g. wss://pbx.example.cn:8089/ws), not {url!r}")
    secret = settings.get("SOFTPHONE_SECRET") or ""
    if len(secret) < MIN_SECRET_CHARS:
        raise SoftphoneError(f"SOFTPHONE_WS_URL is set, so SOFTPHONE_SECRET must be set too, at least "
                             f"{MIN_SECRET_CHARS} characters (the seats' SIP passwords are derived from it)")
    domain = (settings.get("SOFTPHONE_SIP_DOMAIN") or parts.hostname).strip()
    return {"ws_url": url, "secret": secret, "domain": domain}


def for_seat(settings: dict | None, agent: dict | None) -> dict | None:
    """What the seat's page needs to register (``None``: no softphone for this seat)."""
    name = endpoint_name((agent or {}).get("endpoints"))
    if settings is None or name is None:
        return None
    return {"ws_url": settings["ws_url"], "uri": f"sip:{name}@{settings['domain']}", "user": name,
            "password": sip_password(settings["secret"], name), "display": agent.get("name") or agent["id"]}


def init_app(app) -> None:
    """Read the settings (app config, else environment) and stop start-up on a bad one."""
    for key in SETTINGS:
        if not app.config.get(key) and os.environ.get(key):
            app.config[key] = os.environ[key]
    app.extensions["softphone"] = check(app.config)


# -- Asterisk's side: the seats' WebRTC endpoints for pjsip.conf ---------------------------------
ENDPOINT = """[{name}]                ; seat {seat}'s softphone in the agent console (WebRTC)
type = endpoint
context = {context}
disallow = all
allow = ulaw,alaw
webrtc = yes              ; ICE, AVPF, rtcp-mux, DTLS-SRTP
moh_suggest = hotline     ; on 保持 the caller hears the product's hold music (install.sh)
{dtls}
auth = {name}
aors = {name}
[{name}]
type = auth
auth_type = userpass
username = {name}
password = {password}
[{name}]
type = aor
max_contacts = 1
remove_existing = yes
qualify_frequency = 30
"""


def pjsip_endpoints(seats: list[dict], secret: str, context: str = "hotline-agents",
                    dtls_cert: str | None = None, dtls_key: str | None = None) -> str:
    """pjsip.conf sections for the seats' softphones; SoftphoneError for a seat without a PJSIP endpoint."""
    if bool(dtls_cert) != bool(dtls_key):
        raise SoftphoneError("give both --dtls-cert and --dtls-key, or neither (Asterisk then makes its own)")
    dtls = (f"dtls_cert_file = {dtls_cert}\ndtls_private_key = {dtls_key}" if dtls_cert
            else "dtls_auto_generate_cert = yes")
    blocks = []
    for seat in seats:
        name = endpoint_name(seat.get("endpoints"))
        if name is None:
            raise SoftphoneError(f"seat {seat['id']} has no PJSIP/<name> endpoint (its endpoints: "
                                 f"{', '.join(seat.get('endpoints') or []) or 'none'}); set one with "
                                 f"python -m consoles.users seat {seat['id']} --endpoint PJSIP/agent{seat['id']} …")
        blocks.append(ENDPOINT.format(name=name, seat=seat["id"], context=context, dtls=dtls,
                                      password=sip_password(secret, name)))
    return "\n".join(blocks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consoles.softphone",
                                     description="the agent console's WebRTC softphones for Asterisk")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pjsip", help="print pjsip.conf endpoints for these seats' softphones")
    p.add_argument("seats", nargs="+", metavar="SEAT")
    p.add_argument("--context", default="hotline-agents", help="what the softphone itself may dial")
    p.add_argument("--dtls-cert", help="certificate for DTLS-SRTP (default: Asterisk generates one)")
    p.add_argument("--dtls-key", help="its private key")
    args = parser.parse_args(argv)

    from call_routing.acd import ACD
    from call_routing.rules_store import RulesStore

    secret = os.environ.get("SOFTPHONE_SECRET") or ""
    try:
        if len(secret) < MIN_SECRET_CHARS:
            raise SoftphoneError(f"SOFTPHONE_SECRET must be set (at least {MIN_SECRET_CHARS} characters), "
                                 "the same as the web app's")
        acd = ACD.from_url(None, RulesStore(  # the product's Redis (Sentinel, REDIS_URL or ./run.sh's)
            os.environ.get("RULES_PATH") or None))
        seats = []
        for seat_id in args.seats:
            seat = acd.agent(seat_id)
            if seat is None:
                raise SoftphoneError(f"no seat {seat_id} in the ACD (python -m consoles.users seat {seat_id} …)")
            seats.append(seat)
        print(pjsip_endpoints(seats, secret, args.context, args.dtls_cert, args.dtls_key), end="")
    except SoftphoneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
