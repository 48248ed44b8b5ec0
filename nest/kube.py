"""The function commands' only door to the cluster: kubeconfig, API calls, the gateway's address.

Management commands talk to the API server with the user's own kubeconfig credentials, as
kubectl does, so they work whether or not the gateway runs; invocations go through the gateway
when it can be found. Every API failure becomes a `NestError` here, so commands never show a
kubernetes-client traceback.

The calls are plain REST requests (nest.rest) with credentials from a small kubeconfig loader
(nest.kubeconfig): a command costs an interpreter and a few milliseconds of imports, not the
kubernetes client's second. A kubeconfig that loader does not implement goes through the
kubernetes client instead, and code that needs its typed API (`core`) gets it on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

from crds.constants import (
    DEPLOYMENT_PLURAL,
    ENDPOINTS_PLURAL,
    GROUP,
    POOL_LABEL,
    REPLICASET_PLURAL,
    SANDBOX_PLURAL,
    VERSION,
)
from nest import kubeconfig as kc
from nest import rest
from nest.dirs import local_kubeconfig
from nest.errors import ApiError, NestError, NotFoundError

Obj = dict[str, Any]
ObjList = list[Obj]  # `list` is also a method of Cluster, which would shadow it in annotations
GATEWAY_NAMESPACE = "nest-system"
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"
GATEWAY_PORT = 8090


def kubeconfig_path(env: Mapping[str, str]) -> Path:
    """NEST_KUBECONFIG, else the first file of KUBECONFIG, else the local cluster's."""
    named = env.get("NEST_KUBECONFIG") or (env.get("KUBECONFIG") or "").split(os.pathsep)[0]
    path = Path(named) if named else local_kubeconfig()
    if not path.exists():
        raise NestError(
            f"no kubeconfig at {path}: run `nest cluster up`, or set NEST_KUBECONFIG to a cluster's"
        )
    return path


def context_namespace(kubeconfig: Path) -> str:
    """The current context's namespace, as kubectl would use it; `default` when unset."""
    return kc.context_namespace(kc.load(kubeconfig), kubeconfig)


def api_error(exc: rest.HttpError, what: str) -> NestError:
    """One line naming what failed and the API server's own message."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):  # not JSON, or JSON but no object
        message = exc.reason
    if exc.status == 404:
        return NotFoundError(f"{what}: not found")
    return ApiError(f"{what}: {message} (HTTP {exc.status})")


def _custom(namespace: str | None, plural: str, *rest_: str) -> str:
    """The REST path of a Nest object (collection when no name), in a namespace or all."""
    where = f"/namespaces/{quote(namespace)}" if namespace is not None else ""
    tail = "".join(f"/{quote(part)}" for part in rest_)
    return f"/apis/{GROUP}/{VERSION}{where}/{plural}{tail}"


MERGE_PATCH = "application/merge-patch+json"  # what the kubernetes client sends for a dict


class Cluster:
    """The API calls of the function commands, in one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str | None) -> None:
        self.kubeconfig = kubeconfig
        config = kc.load(kubeconfig)
        self.namespace = namespace or kc.context_namespace(config, kubeconfig)
        self._token: str | None = None
        self.transport: rest.Transport
        try:
            creds = kc.credentials(config, kubeconfig)
        except kc.Unsupported:
            self.transport = rest.ViaClient(self.api)  # the kubernetes client knows how
            self.light = False
        else:
            self.transport, self._token, self.light = rest.Light(creds), creds.token, True

    @classmethod
    def from_args(cls, namespace: str | None) -> Cluster:
        return cls(kubeconfig_path(os.environ), namespace)

    # -- the kubernetes client, for callers of its typed API (and kubeconfigs we cannot read) --

    @cached_property
    def api(self) -> Any:
        from kubernetes import config

        try:
            return config.new_client_from_config(config_file=str(self.kubeconfig))
        except config.ConfigException as exc:
            raise NestError(f"{self.kubeconfig}: {exc}") from exc

    @cached_property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    @cached_property
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def bearer_token(self) -> str | None:
        """The kubeconfig's bearer token, which the gateway checks by TokenReview."""
        if self.light:
            return self._token
        configuration = self.api.configuration
        # Clients name the key BearerToken (newer) or authorization (older); the call runs the
        # refresh hook that exec and OIDC credentials install.
        for key in ("BearerToken", "authorization"):
            value = configuration.get_api_key_with_prefix(key)
            token = str(value or "").removeprefix("Bearer ").strip()
            if token:
                return token
        return None

    # -- requests ------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        what: str,
        query: rest.Query = (),
        body: object = None,
        content_type: str = "application/json",
    ) -> Obj:
        """One API request, its JSON answer; a failure is a NestError naming `what`."""
        try:
            answer = self.transport.request(method, path, query, body, content_type)
        except rest.HttpError as exc:
            raise api_error(exc, what) from exc
        try:
            decoded: object = json.loads(answer)
        except ValueError:
            decoded = answer
        return _obj(decoded)

    # -- Nest objects ----------------------------------------------------------------------------

    def get(self, plural: str, name: str) -> Obj:
        what = f"{_kind(plural)} {self.namespace}/{name}"
        return self.call("GET", _custom(self.namespace, plural, name), what)

    def find(self, plural: str, name: str) -> Obj | None:
        try:
            return self.get(plural, name)
        except NotFoundError:
            return None

    def list(
        self, plural: str, selector: str | None = None, all_namespaces: bool = False
    ) -> ObjList:
        where = "all namespaces" if all_namespaces else self.namespace
        path = _custom(None if all_namespaces else self.namespace, plural)
        query = [("labelSelector", selector)] if selector else []
        found = self.call("GET", path, f"listing {plural} in {where}", query)
        items: ObjList = found.get("items") or []
        return sorted(
            items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def create(self, plural: str, body: Obj) -> Obj:
        what = f"creating {_kind(plural)} {body['metadata']['name']}"
        return self.call("POST", _custom(self.namespace, plural), what, body=body)

    def replace(self, plural: str, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        path = _custom(self.namespace, plural, name)
        return self.call("PUT", path, f"updating {_kind(plural)} {name}", body=body)

    def patch(self, plural: str, name: str, patch: Obj) -> Obj:
        path = _custom(self.namespace, plural, name)
        what = f"patching {_kind(plural)} {name}"
        return self.call("PATCH", path, what, body=patch, content_type=MERGE_PATCH)

    def scale(self, name: str, replicas: int) -> Obj:
        path = _custom(self.namespace, DEPLOYMENT_PLURAL, name, "scale")
        body = {"spec": {"replicas": replicas}}
        return self.call(
            "PATCH", path, f"scaling function {name}", body=body, content_type=MERGE_PATCH
        )

    def delete(self, plural: str, name: str) -> None:
        path = _custom(self.namespace, plural, name)
        what = f"{_kind(plural)} {self.namespace}/{name}"
        self.call("DELETE", path, what, [("propagationPolicy", "Foreground")])

    # -- a function and what belongs to it -------------------------------------------------------

    def function(self, name: str) -> Obj:
        return self.get(DEPLOYMENT_PLURAL, name)

    def sandboxes_of(self, deployment: Obj) -> ObjList:
        return self.list(SANDBOX_PLURAL, selector_string(deployment))

    def replicasets_of(self, deployment: Obj) -> ObjList:
        return self.list(REPLICASET_PLURAL, selector_string(deployment))

    def endpoints_of(self, name: str) -> Obj | None:
        return self.find(ENDPOINTS_PLURAL, name)

    def events_about(self, names: set[str]) -> ObjList:
        """Events of this namespace whose object is one of `names`, oldest first."""
        path = f"/api/v1/namespaces/{quote(self.namespace)}/events"
        events = self.call("GET", path, f"listing events in {self.namespace}").get("items") or []
        found: ObjList = [
            without_nulls(e) for e in events if (e.get("involvedObject") or {}).get("name") in names
        ]
        return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    # -- pods ------------------------------------------------------------------------------------

    def pool_pods(self) -> ObjList:
        """Pool pods (the "nodes" of Nest) in every namespace the user may list."""
        found = self.call(
            "GET", "/api/v1/pods", "listing pool pods", [("labelSelector", POOL_LABEL)]
        )
        pods: ObjList = [without_nulls(p) for p in found.get("items") or []]
        return sorted(pods, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def pod_log(self, namespace: str, pod: str, container: str, tail: int | None) -> str:
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        query = [("container", container)] + ([("tailLines", str(tail))] if tail else [])
        try:
            answer = self.transport.request("GET", path, query)
        except rest.HttpError as exc:
            raise api_error(exc, f"log of {namespace}/{pod}/{container}") from exc
        return answer.decode("utf-8", "replace")

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data (base64 values, as the API serves them)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
        data: dict[str, str] = (
            self.call("GET", path, f"secret {namespace}/{name}").get("data") or {}
        )
        return data

    def gateway_url(self) -> str | None:
        """The base URL of a Ready gateway pod (pod IP: there may be no Services locally)."""
        path = f"/api/v1/namespaces/{GATEWAY_NAMESPACE}/pods"
        try:
            found = self.call(
                "GET", path, "listing gateway pods", [("labelSelector", GATEWAY_SELECTOR)]
            )
        except ApiError:
            return None  # not installed, or not ours to see: invoke goes direct
        for pod in found.get("items") or []:
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            if meta.get("deletionTimestamp"):
                continue
            statuses = status.get("containerStatuses") or []
            if statuses and all(s.get("ready") for s in statuses) and status.get("podIP"):
                return f"http://{status['podIP']}:{GATEWAY_PORT}"
        return None


def without_nulls(value: Any) -> Any:
    """A decoded object without its null fields, as the kubernetes client's
    sanitize_for_serialization returned them (what `-o json` printed before)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def selector_string(deployment: Obj) -> str:
    """spec.selector in `-l` syntax, so the API server filters the sandboxes."""
    selector = (deployment.get("spec") or {}).get("selector") or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(expr.get("values") or [])
        terms.append(
            {
                "In": f"{key} in ({values})",
                "NotIn": f"{key} notin ({values})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }[op]
        )
    return ",".join(terms)


_KINDS = {
    DEPLOYMENT_PLURAL: "function",
    SANDBOX_PLURAL: "sandbox",
    REPLICASET_PLURAL: "replica set",
    ENDPOINTS_PLURAL: "endpoints",
}


def _kind(plural: str) -> str:
    return _KINDS.get(plural, plural)


def _obj(value: object) -> Obj:
    """The client's custom-object calls are typed `object`; they return decoded JSON objects."""
    if not isinstance(value, dict):
        raise ApiError(f"unexpected answer from the API server: {value!r:.200}")
    return value
