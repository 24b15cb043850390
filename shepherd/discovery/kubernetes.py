"""Kubernetes discovery: list, then watch, the pods that match the selectors.

A reflector in miniature: list once (which gives a resourceVersion), then watch from it, moving the
resourceVersion forward with every event and bookmark. A watch that ends (its server timeout, a cut
connection) resumes from the last resourceVersion; `410 Gone` (history compacted) means relist. API
errors back off exponentially. After each change the whole pod cache is mapped to the desired worker
set and handed to the reconciler, which does the adds and drains.

`kubernetes_asyncio` provides the cluster configuration (in-cluster service account or kubeconfig),
authentication, TLS and the request; events are read as raw JSON lines, so a pod stays a plain dict.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from shepherd.discovery.pods import PodRules, desired_workers
from shepherd.discovery.reconciler import Reconciler
from shepherd.periodic import BackgroundTask

log = logging.getLogger("shepherd.discovery")

WATCH_TIMEOUT_SECS = 300  # the server ends each watch after this long; it is then resumed
_MAX_EVENT_BYTES = 16 * 1024 * 1024  # one watch event (a pod object) larger than this is an API error
_BACKOFF_INITIAL_SECS = 0.5
_BACKOFF_MAX_SECS = 30.0


class WatchGone(Exception):
    """410 Gone: the resourceVersion is too old to resume from; relist."""


class KubeApiError(Exception):
    """The API server answered with an error (or something unreadable)."""


async def api_client() -> k8s_client.ApiClient:
    """In a pod: the service account. Elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    configuration = k8s_client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        # Read $KUBECONFIG now: the library reads it once, at import.
        await k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration,
                                          persist_config=False)
    return k8s_client.ApiClient(configuration=configuration)


class PodWatcher(BackgroundTask):
    def __init__(self, rules: PodRules, namespace: str | None, reconciler: Reconciler,
                 client_factory: Callable[[], Any] = api_client, watch_timeout_secs: int = WATCH_TIMEOUT_SECS) -> None:
        self._rules = rules
        self._namespace = namespace
        self._reconciler = reconciler
        self._client_factory = client_factory
        self._watch_timeout = watch_timeout_secs
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod
        self._resource_version = ""
        self._answered = False  # the API gave a good answer since the last error (resets the backoff)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = _BACKOFF_INITIAL_SECS
        api: k8s_client.ApiClient | None = None
        try:
            while True:
                try:
                    if api is None:
                        api = await self._client_factory()
                    core = k8s_client.CoreV1Api(api)
                    if not self._resource_version:
                        await self._list(core)
                    await self._watch(core)
                except WatchGone:
                    log.info("pod watch: resourceVersion %s is gone (410); relisting", self._resource_version)
                    self._resource_version = ""
                except (KubeApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError,
                        k8s_config.ConfigException) as exc:
                    if self._answered:
                        backoff, self._answered = _BACKOFF_INITIAL_SECS, False
                    delay = backoff * (0.5 + random.random() / 2)
                    log.warning("pod watch: %s: %s; retrying in %.1fs", exc.__class__.__name__, exc, delay)
                    await asyncio.sleep(delay)
                    backoff = min(backoff * 2, _BACKOFF_MAX_SECS)
        finally:
            if api is not None:
                await api.close()

    # -- list and watch -----------------------------------------------------------------------

    def _call(self, core: k8s_client.CoreV1Api, **params: Any) -> Any:
        params.update(label_selector=self._rules.server_selector(), _preload_content=False)
        if self._namespace:
            return core.list_namespaced_pod(self._namespace, **params)
        return core.list_pod_for_all_namespaces(**params)

    async def _list(self, core: k8s_client.CoreV1Api) -> None:
        response = await self._call(core, _request_timeout=aiohttp.ClientTimeout(total=60))
        async with response:
            if response.status != 200:
                raise KubeApiError(f"list pods: HTTP {response.status}: {(await response.text())[:200]}")
            body = orjson.loads(await response.read())
        self._answered = True
        self._pods = {pod["metadata"]["uid"]: pod for pod in body.get("items") or ()
                      if (pod.get("metadata") or {}).get("uid")}
        self._resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        log.info("pod list: %d pods at resourceVersion %s", len(self._pods), self._resource_version)
        self._publish()

    async def _watch(self, core: k8s_client.CoreV1Api) -> None:
        # The read timeout outlasts the server's own watch timeout; bookmarks keep a quiet watch alive.
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=self._watch_timeout + 30)
        response = await self._call(core, watch=True, allow_watch_bookmarks=True,
                                    resource_version=self._resource_version,
                                    timeout_seconds=self._watch_timeout, _request_timeout=timeout)
        async with response:
            if response.status == 410:
                raise WatchGone()
            if response.status != 200:
                raise KubeApiError(f"watch pods: HTTP {response.status}: {(await response.text())[:200]}")
            self._answered = True
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if line.strip():
                        self._apply(orjson.loads(line))
                if len(buffer) > _MAX_EVENT_BYTES:
                    raise KubeApiError(f"a watch event is larger than {_MAX_EVENT_BYTES} bytes")
        # The server ended the watch (its timeout, or the connection was cut): resume from here.

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        metadata = obj.get("metadata") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchGone()
            raise KubeApiError(f"watch error event: {obj.get('code')} {obj.get('message', '')}"[:300])
        version = metadata.get("resourceVersion")
        if version:
            self._resource_version = str(version)
        if kind == "BOOKMARK":
            return
        uid = metadata.get("uid")
        if not uid or kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        if kind == "DELETED":
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = obj
        self._publish()

    def _publish(self) -> None:
        self._reconciler.set_desired(desired_workers(self._pods.values(), self._rules))
