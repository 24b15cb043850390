"""The one way a serving handler passes admission control (middleware/admission.py) and leaves it."""

from __future__ import annotations

from aiohttp import web

from shepherd.context import AppContext
from shepherd.headers import presented_key
from shepherd.middleware.admission import Ticket
from shepherd.middleware.priority import PRIORITY_HEADER
from shepherd.request_keys import TENANT, TICKET, USAGE, peek


async def admit(context: AppContext, request: web.Request, model: str | None) -> Ticket | None:
    """A ticket to hand back with `leave`, or None when admission control is off; raises its 429/503."""
    if not context.config.admission.enabled:
        return None
    ticket = await context.admission.acquire(presented_key(request.headers), peek(request, TENANT), model,
                                             request.headers.get(PRIORITY_HEADER))
    request[TICKET] = ticket
    return ticket


def install_answer_started(app: web.Application, context: AppContext) -> None:
    """A request whose answer begins (its head goes out, streamed or whole) can no longer be preempted."""
    if not context.config.admission.priority_scheduler_enabled:
        return

    async def started(request: web.Request, response: web.StreamResponse) -> None:
        ticket = peek(request, TICKET)
        if ticket is not None:
            context.admission.started(ticket)

    app.on_response_prepare.append(started)


def leave(context: AppContext, request: web.Request, ticket: Ticket | None) -> None:
    """Hand the ticket back, with the tokens the request used (the tenant token limits count them)."""
    if ticket is None:
        return
    usage = peek(request, USAGE)
    context.admission.release(ticket, int(usage[0]) + int(usage[1]) if usage else 0)
