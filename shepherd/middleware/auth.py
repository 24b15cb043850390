"""Who may call what.

* Serving routes (inference, tokenize, ...) need one of the gateway's serving keys when any is
  configured (`--api-key`, `--tenant-api-key tenant_id:key`), sent as `Authorization: Bearer <key>` or
  `x-api-key: <key>` (what the Anthropic SDK sends); the key that matched names the caller's tenant
  (middleware/tenant.py). Public routes (health, readiness, model list, engine info) need nothing.
* Control-plane routes (workers, cache flushes, loads, tokenizer and parser admin) need an admin
  credential when control-plane auth is configured: a JWT from `--jwt-issuer` whose role maps to
  `admin`, or a `--control-plane-api-keys id:name:role:key` key with role `admin`. A valid credential
  with another role gets 403. Without control-plane auth the admin API is closed (403): a serving
  key never doubles as an admin credential (its holders would otherwise register workers of their
  own and receive other users' prompts). Leaving it open to anyone who can reach the port takes
  `--allow-unauthenticated-admin`, which is logged at start-up and refused when serving is keyed.

Keys are kept only as SHA-256 digests, compared in constant time, and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt
from multidict import CIMultiDictProxy

from shepherd.config import AuthConfig
from shepherd.errors import GatewayError
from shepherd.headers import presented_key
from shepherd.middleware.tenant import key_tenants

log = logging.getLogger("shepherd.auth")

PUBLIC_PATHS = frozenset({"/health", "/liveness", "/readiness", "/health_generate", "/v1/models", "/get_model_info",
                          "/get_server_info", "/engine_metrics"})
DASHBOARD_PREFIX = "/dashboard"
PUBLIC_PREFIXES = ("/v1/models/",)  # one model's card is as public as the list


def is_public(path: str) -> bool:
    """Routes anyone may call (health, readiness, the model list and cards, engine info)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


CONTROL_PLANE_PREFIXES = ("/workers", "/flush_cache", "/get_loads", "/v1/tokenizers", "/parse/", "/wasm",
                          "/start_profile", "/stop_profile", DASHBOARD_PREFIX)


def is_serving(path: str) -> bool:
    """Routes that serve a tenant (inference, tokenize, responses, ...): neither public nor control plane."""
    return not is_public(path) and not path.startswith(CONTROL_PLANE_PREFIXES)
# A browser opening the status page can only be asked for credentials through Basic auth.
_DASHBOARD_CHALLENGE = {"WWW-Authenticate": 'Basic realm="shepherd dashboard", charset="UTF-8"'}
_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
_JWKS_REFRESH_SECS = 30.0
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="control-plane"'}


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def reject_duplicate_credentials(headers: CIMultiDictProxy[str]) -> None:
    """Two Authorization (or x-api-key) headers are refused: otherwise one would be checked and
    the other forwarded, and which is which depends on the reader (RFC 9110 makes it a singleton)."""
    for name in ("authorization", "x-api-key"):
        if name in headers and len(headers.getall(name)) > 1:
            raise GatewayError(400, "duplicate_credentials", f"The request has more than one {name} header")


def _basic_as_bearer(headers: Mapping[str, str]) -> Mapping[str, str]:
    value = headers.get("authorization")
    if not value:
        return headers
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return headers
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return {}
    token = password or user  # any user name; the key goes in the password (or alone in the user name)
    return {"authorization": f"Bearer {token}"} if token else {}


class Authenticator:
    def __init__(self, config: AuthConfig, session: aiohttp.ClientSession) -> None:
        self._serving = [(_digest(key), tenant) for key, tenant in key_tenants(config).items()]
        self._control = config.control_plane_keys
        self._jwt = _JwtVerifier(config, session) if config.jwt_issuer else None
        self._admin_open = config.allow_unauthenticated_admin
        # Nothing to check only when there are no serving keys and the admin API is open by choice.
        self.enabled = bool(self._serving or self._control or self._jwt or not self._admin_open)
        if self._admin_open:
            log.warning("the admin API (%s) is open to anyone who can reach this port "
                        "(--allow-unauthenticated-admin)", ", ".join(p.rstrip("/") for p in CONTROL_PLANE_PREFIXES))

    async def check(self, path: str, headers: Mapping[str, str]) -> str | None:
        """Raise a 401/403 GatewayError unless the request may go on; on a serving route with keys,
        return the tenant identity of the key that matched."""
        if is_public(path):
            return None
        if path.startswith(DASHBOARD_PREFIX):
            await self._check_dashboard(headers)
        elif path.startswith(CONTROL_PLANE_PREFIXES):
            await self._check_control_plane(headers)
        elif self._serving:
            return self._check_serving(headers)
        return None

    def _check_serving(self, headers: Mapping[str, str]) -> str:
        token = presented_key(headers)
        if token is None:
            raise GatewayError(401, "missing_api_key", "An API key is required (Authorization: Bearer <key>)")
        digest = _digest(token)
        tenant = None
        for candidate, owner in self._serving:  # no early exit: the time taken does not say which key matched
            if hmac.compare_digest(digest, candidate):
                tenant = owner
        if tenant is None:
            raise GatewayError(401, "invalid_api_key", "Incorrect API key provided")
        return tenant

    async def _check_control_plane(self, headers: Mapping[str, str]) -> None:
        if not self._control and self._jwt is None:
            if self._admin_open:
                return
            raise GatewayError(403, "admin_api_closed",
                               "The admin API is closed: start the gateway with --control-plane-api-keys or "
                               "--jwt-issuer to use it (or --allow-unauthenticated-admin to leave it open)")
        token = presented_key(headers)
        if token is None:
            raise GatewayError(401, "missing_credentials", "This route needs an admin API key or token",
                               headers=_CHALLENGE)
        if self._jwt is not None and token.count(".") == 2:
            role = await self._jwt.role(token)  # a JWT never falls back to the API keys
        else:
            role = self._control_key_role(token)
        if role != "admin":
            raise GatewayError(403, "insufficient_role", "This route needs the admin role")

    async def _check_dashboard(self, headers: Mapping[str, str]) -> None:
        """Admin credentials as for any control-plane route, also accepted as a Basic-auth password
        (what a browser sends after its login prompt)."""
        try:
            await self._check_control_plane(_basic_as_bearer(headers))
        except GatewayError as exc:
            if exc.status != 401:
                raise
            raise GatewayError(401, exc.code, exc.message, headers=_DASHBOARD_CHALLENGE) from None

    def _control_key_role(self, token: str) -> str:
        digest = _digest(token)
        role = None
        for key in self._control:  # no early exit: the time taken does not say which key matched
            if hmac.compare_digest(digest, key.digest):
                role = key.role
        if role is None:
            raise GatewayError(401, "invalid_credentials", "Invalid control-plane API key", headers=_CHALLENGE)
        return role


class _JwtVerifier:
    """Validates JWTs against the issuer's JWKS (fetched asynchronously, cached, refreshed on an unknown kid)."""

    def __init__(self, config: AuthConfig, session: aiohttp.ClientSession) -> None:
        self._issuer = config.jwt_issuer
        self._audience = config.jwt_audience
        self._jwks_uri = config.jwt_jwks_uri or ""
        self._mapping = dict(config.jwt_role_mapping)
        self._session = session
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def role(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise GatewayError(401, "invalid_token", "Malformed token", headers=_CHALLENGE) from None
        key = await self._key(str(header.get("kid", "")))
        if key is None:
            raise GatewayError(401, "invalid_token", "Token signed by an unknown key", headers=_CHALLENGE)
        try:
            claims = jwt.decode(token, key=key, algorithms=_JWT_ALGORITHMS, issuer=self._issuer,
                                audience=self._audience, options={"verify_aud": self._audience is not None,
                                                                  "require": ["exp", "iss"]})
        except jwt.ExpiredSignatureError:
            raise GatewayError(401, "token_expired", "The token has expired", headers=_CHALLENGE) from None
        except jwt.PyJWTError as exc:
            raise GatewayError(401, "invalid_token", f"Invalid token: {exc}", headers=_CHALLENGE) from None
        return self._role_of(claims)

    def _role_of(self, claims: Mapping[str, Any]) -> str:
        values: list[str] = []
        for claim in ("role", "roles", "groups"):
            value = claims.get(claim)
            if isinstance(value, str):
                values.append(value)
            elif isinstance(value, list):
                values.extend(str(v) for v in value)
        roles = {self._mapping.get(v, v).lower() for v in values}
        return "admin" if "admin" in roles else (sorted(roles)[0] if roles else "none")

    async def _key(self, kid: str) -> Any:
        if kid not in self._keys and time.monotonic() - self._fetched_at > _JWKS_REFRESH_SECS:
            async with self._lock:
                if kid not in self._keys and time.monotonic() - self._fetched_at > _JWKS_REFRESH_SECS:
                    await self._refresh()
        if kid:
            return self._keys.get(kid)
        return next(iter(self._keys.values()), None) if len(self._keys) == 1 else None

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            async with self._session.get(self._jwks_uri, timeout=aiohttp.ClientTimeout(total=5)) as response:
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("could not fetch JWKS from %s: %s", self._jwks_uri, exc)
            return
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            try:
                keys[str(entry.get("kid", ""))] = jwt.PyJWK(entry).key
            except jwt.PyJWTError as exc:
                log.warning("skipping a JWKS key: %s", exc)
        self._keys = keys
