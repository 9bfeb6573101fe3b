"""Thin Asterisk entry points: AGI scripts, the FastAGI server, and the sample dialplan.

One small module per feature (route_call, queue_wait, transfer, threeway, survey), each a plain
``handler(session)`` registered in :data:`HANDLERS`; the decisions live in :mod:`ivr.flow`.
"""
from .callback import handler as callback
from .queue_wait import handler as queue_wait
from .route_call import handler as route_call
from .survey import handler as survey
from .threeway import handler as threeway
from .transfer import handler as transfer

HANDLERS = {"route_call": route_call, "queue_wait": queue_wait, "transfer": transfer, "survey": survey,
            "callback": callback, "threeway": threeway}
