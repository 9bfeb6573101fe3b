"""Every Redis key of the ACD, built in this one place — for Python and for the Lua scripts.

All keys start with a prefix (default ``acd``). Under Redis Cluster use a hash-tagged prefix
such as ``{acd}`` so that every key lands in one slot: the Lua scripts touch keys they compute
at run time (an agent's skills, a call's queues), which is only allowed within one slot.
"""
from __future__ import annotations

#: name -> (template, what it holds). ``{p}`` is the prefix, ``{x}`` the one argument.
KEYS = {
    "agent": ("{p}:agent:{x}", "hash: an agent's profile and state (state, reason, since, call, idle_ms, ...)"),
    "agent_skills": ("{p}:agent:{x}:skills", "hash: skill id -> level (1-99, higher first)"),
    "agents": ("{p}:agents", "set: every provisioned agent id"),
    "phone": ("{p}:phone:{x}", "string: an agent's phone cannot ring (phone-offline | phone-busy), as the PBX "
                               "says (ivr.asterisk.pbx.PhoneWatcher); expires unless refreshed"),
    "ready": ("{p}:ready:{x}", "zset per skill: ready agents, score (100-level)*1e13 + idle-since ms"),
    "staffed": ("{p}:staffed:{x}", "set per skill: agents logged in (any state but offline)"),
    "queue": ("{p}:queue:{x}", "zset per skill: waiting calls, score (9-priority)*1e13 + entered ms"),
    "age": ("{p}:age:{x}", "zset per skill: calls not yet overflowed out of it, score = joined at (s)"),
    "call": ("{p}:call:{x}", "hash: one call (line, caller, skill, queues, score, state, kind, agent, ticket, ...)"),
    "ringing": ("{p}:ringing", "zset: offered calls, score = deadline for an answer (s)"),
    "wrapping": ("{p}:wrapping", "zset: agents in wrap-up, score = wrap-up started (s)"),
    "beats": ("{p}:beats", "zset: logged-in agents, score = last heartbeat (s)"),
    "cb_by_caller": ("{p}:cbcaller:{x}", "string: pending callback call id of a caller (x = hash of number)"),
    "surveyed": ("{p}:surveyed:{x}", "string: survey score of a call the ACD never queued (once per call id)"),
    "dialed": ("{p}:dialed:{x}", "string: set once when callback offer x (call:offer) was dialed"),
    "handle": ("{p}:handle:{x}", "list per skill: the latest handle times (s), newest first"),
    "log": ("{p}:log", "stream: the append-only queue log (event e, time t, call, agent, skill, line, ...)"),
    "alerts": ("{p}:alerts", "stream: supervisor warnings (unstaffed group, ...)"),
    "offers": ("{p}:offers", "pub/sub channel: 'call agent kind n skill' for every offer (see ACD.follow_offers)"),
    "seen": ("{p}:seen", "zset: live callers waiting, score = last time their front-end asked about them (s)"),
    "retry": ("{p}:retry", "zset: callbacks whose callee did not answer, score = when to try again (s)"),
    "alert_lock": ("{p}:alertlock:{x}", "string with TTL: one unstaffed-group warning per skill per minute"),
    "groups": ("{p}:groups", "hash: skill id -> name of every seat group the rules have had (a removed group's "
                             "callers are moved out of it by tick, see docs/acd.md)"),
    "groups_seen": ("{p}:groups_seen", "zset: skill id -> last time a process found the group in its rules (s)"),
    "token": ("{p}:token:{x}", "string: agent id of an API token (x = sha256 of the token), with TTL"),
}


class Keys:
    """``Keys("acd").queue("general") == "acd:queue:general"``."""

    def __init__(self, prefix: str = "acd"):
        self.prefix = prefix

    def __getattr__(self, name):
        try:
            template = KEYS[name][0]
        except KeyError:
            raise AttributeError(name) from None
        prefix = self.prefix
        if "{x}" in template:
            return lambda x: template.format(p=prefix, x=x)
        return lambda: template.format(p=prefix)


def lua_key_functions() -> str:
    """The same key builders as Lua functions ``k_<name>(x)``, reading the prefix from ``P``."""
    out = []
    for name, (template, _) in KEYS.items():
        parts = template.split("{x}")
        if len(parts) == 2:
            head = parts[0].replace("{p}", "")
            out.append(f"local function k_{name}(x) return P .. '{head}' .. x .. '{parts[1]}' end")
        else:
            out.append(f"local function k_{name}() return P .. '{template.replace('{p}', '')}' end")
    return "\n".join(out)
