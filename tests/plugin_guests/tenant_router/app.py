"""A Python plugin, built into a component by componentize-py against shepherd/plugins/wit/plugin.wit.

Tenant routing: a request without `x-tenant` is rejected; a tenant's request gets an
`x-tenant-route` header for the engines and its `max_tokens` capped to the tenant's budget.
"""

import json

from wit_world import exports  # type: ignore[import-not-found]
from wit_world.exports.hooks import (  # type: ignore[import-not-found]
    Action_Continue,
    Action_Modify,
    Action_Reject,
    Header,
    HttpRequest,
    HttpResponse,
    Modification,
    Rejection,
)

BUDGET = 3


class Hooks(exports.Hooks):  # type: ignore[misc]
    def on_request(self, req: HttpRequest) -> object:
        tenant = next((h.value for h in req.headers if h.name == "x-tenant"), None)
        if tenant is None:
            error = {"message": "x-tenant is required", "type": "invalid_request_error", "param": None,
                     "code": "missing_tenant"}
            return Action_Reject(Rejection(400, [], json.dumps({"error": error})))
        body = json.loads(req.body)
        body["max_tokens"] = min(int(body.get("max_tokens") or BUDGET), BUDGET)
        return Action_Modify(Modification(None, [], [Header("x-tenant-route", "tenant-" + tenant)], [],
                                          json.dumps(body)))

    def on_response(self, resp: HttpResponse) -> object:
        return Action_Continue()
