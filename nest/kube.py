"""The function commands' only door to the cluster: kubeconfig, API calls, the gateway's address.

Management commands talk to the API server with the user's own kubeconfig credentials, as
kubectl does, so they work whether or not the gateway runs; invocations go through the gateway
when it can be found. Every API failure becomes a `NestError` here, so commands never show a
kubernetes-client traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from crds.constants import (
    DEPLOYMENT_PLURAL,
    ENDPOINTS_PLURAL,
    GROUP,
    POOL_LABEL,
    REPLICASET_PLURAL,
    SANDBOX_PLURAL,
    VERSION,
)
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
    try:
        _, active = config.list_kube_config_contexts(config_file=str(kubeconfig))
    except config.ConfigException as exc:
        raise NestError(f"{kubeconfig}: {exc}") from exc
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


def api_error(exc: ApiException, what: str) -> NestError:
    """One line naming what failed and the API server's own message."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except ValueError:
        message = exc.reason
    if exc.status == 404:
        return NotFoundError(f"{what}: not found")
    return ApiError(f"{what}: {message} (HTTP {exc.status})")


class Cluster:
    """The API calls of the function commands, in one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str | None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace or context_namespace(kubeconfig)
        try:
            self.api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
        except config.ConfigException as exc:
            raise NestError(f"{kubeconfig}: {exc}") from exc
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    @classmethod
    def from_args(cls, namespace: str | None) -> Cluster:
        return cls(kubeconfig_path(os.environ), namespace)

    def bearer_token(self) -> str | None:
        """The kubeconfig's bearer token, which the gateway checks by TokenReview."""
        configuration = self.api.configuration
        # Clients name the key BearerToken (newer) or authorization (older); the call runs the
        # refresh hook that exec and OIDC credentials install.
        for key in ("BearerToken", "authorization"):
            value = configuration.get_api_key_with_prefix(key)
            token = str(value or "").removeprefix("Bearer ").strip()
            if token:
                return token
        return None

    # -- Nest objects ----------------------------------------------------------------------------

    def _args(self, plural: str) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.namespace, plural

    def get(self, plural: str, name: str) -> Obj:
        try:
            obj = self.custom.get_namespaced_custom_object(*self._args(plural), name)
        except ApiException as exc:
            raise api_error(exc, f"{_kind(plural)} {self.namespace}/{name}") from exc
        return _obj(obj)

    def find(self, plural: str, name: str) -> Obj | None:
        try:
            return self.get(plural, name)
        except NotFoundError:
            return None

    def list(
        self, plural: str, selector: str | None = None, all_namespaces: bool = False
    ) -> ObjList:
        try:
            if all_namespaces:
                found = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, label_selector=selector or ""
                )
            else:
                found = self.custom.list_namespaced_custom_object(
                    *self._args(plural), label_selector=selector or ""
                )
        except ApiException as exc:
            where = "all namespaces" if all_namespaces else self.namespace
            raise api_error(exc, f"listing {plural} in {where}") from exc
        items: ObjList = _obj(found).get("items") or []
        return sorted(
            items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def create(self, plural: str, body: Obj) -> Obj:
        try:
            obj = self.custom.create_namespaced_custom_object(*self._args(plural), body)
        except ApiException as exc:
            raise api_error(exc, f"creating {_kind(plural)} {body['metadata']['name']}") from exc
        return _obj(obj)

    def replace(self, plural: str, body: Obj) -> Obj:
        name = body["metadata"]["name"]
        try:
            obj = self.custom.replace_namespaced_custom_object(*self._args(plural), name, body)
        except ApiException as exc:
            raise api_error(exc, f"updating {_kind(plural)} {name}") from exc
        return _obj(obj)

    def patch(self, plural: str, name: str, patch: Obj) -> Obj:
        try:
            obj = self.custom.patch_namespaced_custom_object(*self._args(plural), name, patch)
        except ApiException as exc:
            raise api_error(exc, f"patching {_kind(plural)} {name}") from exc
        return _obj(obj)

    def scale(self, name: str, replicas: int) -> Obj:
        try:
            obj = self.custom.patch_namespaced_custom_object_scale(
                *self._args(DEPLOYMENT_PLURAL), name, {"spec": {"replicas": replicas}}
            )
        except ApiException as exc:
            raise api_error(exc, f"scaling function {name}") from exc
        return _obj(obj)

    def delete(self, plural: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                *self._args(plural), name, propagation_policy="Foreground"
            )
        except ApiException as exc:
            raise api_error(exc, f"{_kind(plural)} {self.namespace}/{name}") from exc

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
        try:
            events = self.core.list_namespaced_event(self.namespace).items
        except ApiException as exc:
            raise api_error(exc, f"listing events in {self.namespace}") from exc
        found: list[Obj] = [
            self.api.sanitize_for_serialization(e)
            for e in events
            if e.involved_object and e.involved_object.name in names
        ]
        return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    # -- pods ------------------------------------------------------------------------------------

    def pool_pods(self) -> ObjList:
        """Pool pods (the "nodes" of Nest) in every namespace the user may list."""
        try:
            pods = self.core.list_pod_for_all_namespaces(label_selector=POOL_LABEL).items
        except ApiException as exc:
            raise api_error(exc, "listing pool pods") from exc
        found: ObjList = [self.api.sanitize_for_serialization(p) for p in pods]
        return sorted(found, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def pod_log(self, namespace: str, pod: str, container: str, tail: int | None) -> str:
        try:
            text: str = self.core.read_namespaced_pod_log(
                pod, namespace, container=container, tail_lines=tail
            )
        except ApiException as exc:
            raise api_error(exc, f"log of {namespace}/{pod}/{container}") from exc
        return text

    def gateway_url(self) -> str | None:
        """The base URL of a Ready gateway pod (pod IP: there may be no Services locally)."""
        try:
            pods = self.core.list_namespaced_pod(
                GATEWAY_NAMESPACE, label_selector=GATEWAY_SELECTOR
            ).items
        except ApiException:
            return None  # not installed, or not ours to see: invoke goes direct
        for pod in pods:
            meta, status = pod.metadata, pod.status
            if meta is None or status is None or meta.deletion_timestamp is not None:
                continue
            statuses = status.container_statuses or []
            if statuses and all(s.ready for s in statuses) and status.pod_ip:
                return f"http://{status.pod_ip}:{GATEWAY_PORT}"
        return None


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
