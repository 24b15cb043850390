"""A Kubernetes API endpoint for pods, served on loopback by the test suite (no API server runs here).

It speaks the real wire format of `GET /api/v1/[namespaces/NS/]pods`: a PodList with
`metadata.resourceVersion`; with `watch=true`, a chunked stream of one JSON event per line
(ADDED, MODIFIED, DELETED, BOOKMARK, ERROR) starting after `resourceVersion`, ending after
`timeoutSeconds`. History older than `compact()` answers `410 Gone` as an ERROR event (what a real
API server does) or, with `gone_as_status`, as an HTTP 410. Requests need the kubeconfig's token.

Runs its own event loop in a thread, so synchronous tests can drive it while gateway processes
watch it.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import ipaddress
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TOKEN = "test-cluster-token"


@dataclass
class _Watcher:
    namespace: str | None
    selector: dict[str, str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    response: web.StreamResponse | None = None


@dataclass
class WatchRequest:
    resource_version: str
    bookmarks: bool
    selector: str


class FakeKubeApi:
    def __init__(self, bookmark_interval_secs: float = 0.3, tls: tuple[str, str] | None = None) -> None:
        self.bookmark_interval = bookmark_interval_secs
        self._tls = tls  # (certificate, key) PEM paths: serve HTTPS, as a real API server does
        self.version = 100
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, type, pod)
        self.compacted_below = 0
        self.gone_as_status = False
        self.fail_next = 0  # answer this many requests with 500
        self.lists = 0
        self.watches: list[WatchRequest] = []
        self.unauthorized = 0
        self._watchers: list[_Watcher] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # -- the server ---------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods_route)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods_route)
        add_discovery_routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._tls)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{self.port}"
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        await self._runner.cleanup()

    async def _pods_route(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.unauthorized += 1
            return _status(401, "Unauthorized", "Unauthorized")
        if self.fail_next > 0:
            self.fail_next -= 1
            return _status(500, "InternalError", "etcd is having a moment")
        namespace = request.match_info.get("namespace")
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, namespace, selector)
        self.lists += 1
        items = [pod for pod in self.pods.values() if _matches(pod, namespace, selector)]
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items},
                                 dumps=lambda o: orjson.dumps(o).decode())

    async def _watch(self, request: web.Request, namespace: str | None,
                     selector: dict[str, str]) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1", "True")
        self.watches.append(WatchRequest(str(since), bookmarks, request.query.get("labelSelector", "")))
        if since < self.compacted_below and self.gone_as_status:
            return _status(410, "Expired", f"too old resource version: {since} ({self.compacted_below})")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.compacted_below:
            await _send(response, {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                "message": f"too old resource version: {since} ({self.compacted_below})"}})
            return response
        watcher = _Watcher(namespace, selector, response=response)
        for version, kind, pod in self.history:
            if version > since and _matches(pod, namespace, selector):
                await _send(response, {"type": kind, "object": pod})
        self._watchers.append(watcher)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), min(left, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks:
                        await _send(response, {"type": "BOOKMARK", "object": {
                            "kind": "Pod", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self.version)}}})
                    continue
                if event is None:
                    break
                await _send(response, event)
        finally:
            self._watchers.remove(watcher)
        return response

    # -- what a test does (thread-safe) -------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def create_pod(self, name: str, port: int, *, labels: dict[str, str], namespace: str = "default",
                   ready: bool = False, annotations: dict[str, str] | None = None, ip: str = "127.0.0.1") -> None:
        pod = {
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "labels": dict(labels),
                         "annotations": {"smg.ai/worker-ports": str(port), **(annotations or {})}},
            "spec": {"containers": [{"name": "engine", "image": "engine:latest"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        }
        self._call(self._record, "ADDED", (namespace, name), pod)
        if ready:
            self.set_ready(name, True, namespace=namespace, ip=ip)

    def set_ready(self, name: str, ready: bool, *, namespace: str = "default", ip: str = "127.0.0.1") -> None:
        pod = copy.deepcopy(self.pods[(namespace, name)])
        pod["status"] = {"phase": "Running", "podIP": ip,
                         "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        self._call(self._record, "MODIFIED", (namespace, name), pod)

    def delete_pod(self, name: str, *, namespace: str = "default") -> None:
        pod = copy.deepcopy(self.pods[(namespace, name)])
        self._call(self._record, "DELETED", (namespace, name), pod)

    def cut_watches(self) -> int:
        """Drop every open watch connection abruptly (a network cut, an API server restart)."""
        return int(self._call(self._cut))

    def compact(self) -> None:
        """Forget all history: a watch from any earlier resourceVersion is answered 410 Gone."""
        def run() -> None:
            self.history.clear()
            self.compacted_below = self.version + 1

        self._call(run)

    def _cut(self) -> int:
        count = 0
        for watcher in list(self._watchers):
            if watcher.response is not None and watcher.response._req is not None:  # noqa: SLF001
                transport = watcher.response._req.transport  # noqa: SLF001
                if transport is not None:
                    transport.abort()
                    count += 1
            watcher.queue.put_nowait(None)
        return count

    def _record(self, kind: str, key: tuple[str, str], pod: dict[str, Any]) -> None:
        self.version += 1
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(self.version)
        if kind == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod
        self.history.append((self.version, kind, pod))
        for watcher in self._watchers:
            if _matches(pod, watcher.namespace, watcher.selector):
                watcher.queue.put_nowait({"type": kind, "object": pod})

    def open_watches(self) -> int:
        return len(self._watchers)

    def kubeconfig(self) -> str:
        """A kubeconfig (YAML is a superset of JSON) pointing at this endpoint with a bearer token."""
        return orjson.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }).decode()


# API discovery for the kinds deploy/kubernetes uses, so `kubectl --dry-run=client` can map them
# to resources (it asks the server even in a client-side dry run); every other object is 404.
_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {  # group/version -> (resource, kind, namespaced)
    "v1": [("pods", "Pod", True), ("services", "Service", True), ("configmaps", "ConfigMap", True),
           ("secrets", "Secret", True), ("serviceaccounts", "ServiceAccount", True),
           ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True),
                                     ("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
}


def add_discovery_routes(app: web.Application) -> None:
    def resource_list(group_version: str) -> dict[str, Any]:
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": [
            {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for name, kind, namespaced in _RESOURCES[group_version]]}

    async def core(request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})

    async def groups(request: web.Request) -> web.Response:
        entries = []
        for group_version in _RESOURCES:
            if "/" in group_version:
                group, version = group_version.split("/")
                gv = {"groupVersion": group_version, "version": version}
                entries.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": entries})

    async def group_resources(request: web.Request) -> web.Response:
        group_version = request.match_info.get("group", "") + "/" + request.match_info["version"]
        group_version = group_version.removeprefix("/")
        if group_version not in _RESOURCES:
            return _status(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(resource_list(group_version))

    async def not_found(request: web.Request) -> web.Response:
        return _status(404, "NotFound", f"{request.path} not found")

    app.router.add_get("/api", core)
    app.router.add_get("/apis", groups)
    app.router.add_get("/api/{version}", group_resources)
    app.router.add_get("/apis/{group}/{version}", group_resources)
    app.router.add_route("*", "/{tail:.*}", not_found)


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (it is its own CA) and its key, as PEM files in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = f"{directory}/ca.crt", f"{directory}/tls.key"
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(orjson.dumps(event) + b"\n")


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def _parse_selector(value: str) -> dict[str, str]:
    pairs = {}
    for part in value.split(","):
        if part.strip():
            key, _, wanted = part.partition("=")
            pairs[key.strip()] = wanted.strip().lstrip("=")
    return pairs


def _matches(pod: dict[str, Any], namespace: str | None, selector: dict[str, str]) -> bool:
    metadata = pod["metadata"]
    if namespace is not None and metadata["namespace"] != namespace:
        return False
    labels = metadata.get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())
