"""The ACD's offers: a call offered to one seat, answered or not; transfers to a group and the
three-way transfer (三方转接) that reserves a seat of it; every process hearing of every offer."""
from __future__ import annotations

from typing import Callable

from .model import ACDError, Offer, Result, _text, log


class OffersMixin:
    """The offer half of :class:`call_routing.acd.core.ACD`: a call and a seat meeting."""

    def _announce(self, offer: Offer) -> None:
        for hook in self.on_offer:
            hook(offer)
        if offer.kind == "callback" and self.dispatch_callback is None:
            log.warning("callback %s (offer %s) reserved a seat but this process dials no callbacks: it goes back "
                        "to its place at the ring timeout", offer.call_id, offer.n)
        elif offer.kind == "callback" and self.dispatch_callback:
            try:
                self.dispatch_callback(self, offer)
            except Exception:  # the ring timeout gives the callback back its place
                log.exception("could not start callback %s (offer %s)", offer.call_id, offer.n)

    def follow_offers(self, handler: Callable[[Offer], None], stop=None, poll_s: float = 1.0) -> None:
        """Call ``handler(offer)`` for every offer made by any process (ticker, agent API, other
        workers) until ``stop`` (a ``threading.Event``) is set. Run it in a thread of each
        front-end process. Pub/sub is at-most-once: a front-end that misses a message still sees
        the call ringing in :meth:`call`; handlers must tolerate the same offer twice (a process
        also gets its own offers through ``on_offer``): ``(call_id, n)`` identifies an offer."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.offers())
        try:
            while stop is None or not stop.is_set():
                message = pubsub.get_message(timeout=poll_s)
                if not message:
                    continue
                call_id, agent_id, kind, n, skill = _text(message["data"]).split(" ")
                handler(Offer(call_id, agent_id, kind, int(n), skill))
        finally:
            pubsub.close()

    def answer(self, call_id: str, agent_id: str = "") -> Result:
        """The offered agent picked up (for a callback: both legs are bridged). ringing → connected/busy."""
        return self._run("answer", call_id, agent_id)

    def no_answer(self, call_id: str, reason: str = "no-answer") -> Result:
        """The agent did not pick up: the call goes back to its place (the head) and is offered to
        the next agent; the agent is paused with reason ``no-answer``."""
        return self._run("no_answer", call_id, reason, "0")

    def transfer(self, call_id: str, skill: str, *, three_way: bool = False) -> Result:
        """An agent transfers a connected call to a group (expert groups included); the caller
        keeps their place by arrival time, the agent goes to wrap-up.

        ``three_way=True`` (三方转接, the agent stays in the conference): only when a seat of
        the group (or its chain) is ready right now — that seat is reserved in the same round
        trip (``Result.offers``, kind ``transfer``); otherwise status ``no_seat`` and nothing
        changes. The agent stays out of rotation (paused, reason ``three-way``) until
        :meth:`end_three_way` (they left: wrap-up) or :meth:`take_back` (cancelled)."""
        if skill not in self.rules.skills:
            raise ACDError(f"no skill {skill!r} in rules {self.rules.version}")
        if three_way:
            # a seat of that very group, open now: never its overflow (a general seat pulled in
            # as the "expert" while the experts are closed)
            if not self.is_open(skill):
                return Result("no_seat", "closed")
            return self._run("move", call_id, "consult", "", "queue", skill)
        has_number = bool(_text(self.redis.hget(self.keys.call(call_id), "caller")))
        chain, unstaffed = self._plan(skill, self.clock(), has_number)
        return self._run("move", call_id, "transfer", "", unstaffed, *chain)

    def take_back(self, call_id: str, reason: str = "cancelled") -> Result:
        """A three-way transfer is cancelled (``reason='no-answer'``: the target did not answer,
        and is paused like any seat that misses a call): the call is connected to the agent who
        started it again; a target already talking goes to wrap-up."""
        return self._run("take_back", call_id, reason)

    def end_three_way(self, agent_id: str) -> Result:
        """The agent who started a three-way transfer left the conference: wrap-up."""
        return self._run("end_three_way", agent_id)

    def offer_seen(self, call_id: str, offer: int) -> None:
        """The caller's front-end saw offer number ``offer`` of its call (and rings the seat, or
        its process does). At the ring timeout a seat is paused only for an offer that was seen:
        when a front-end that asks about its caller (see :meth:`position`) never saw the offer,
        it is gone and nobody rang the seat — the seat goes back to ready instead."""
        self._run("offer_seen", call_id, str(offer))
