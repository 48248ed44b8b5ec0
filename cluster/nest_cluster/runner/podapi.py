"""What a pod worker reads from and asks of the API server: ConfigMaps, Secrets and tokens.

Kept apart from the worker so the worker stays the state machine. Tokens for projected
`serviceAccountToken` volumes come from the TokenRequest API with `boundObjectRef` = the Pod, as
the kubelet asks for them: the token then carries the pod's name and uid (a TokenReview shows them
as the user's `authentication.kubernetes.io/pod-name` and `pod-uid` extras) and stops working once
the pod is gone. The runner may do this as the cluster admin (nest_cluster/pki.py); a real kubelet
may through the Node authorizer, for pods bound to its node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nest_cluster.errors import RunnerError
from nest_cluster.runner import volumes

Obj = Mapping[str, Any]


def token_request(pod: Obj, audiences: list[str], seconds: int) -> Any:
    """The TokenRequest the kubelet sends for a projected token of `pod` (pure)."""
    meta = pod["metadata"]
    bound = client.V1BoundObjectReference(
        api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
    )
    spec = client.V1TokenRequestSpec(
        audiences=audiences, expiration_seconds=seconds, bound_object_ref=bound
    )
    return client.AuthenticationV1TokenRequest(spec=spec)


class PodAPI:
    """API reads in one pod's namespace, on behalf of the pod's volumes and env."""

    def __init__(self, core: client.CoreV1Api, pod: Callable[[], Obj]) -> None:
        self.core = core
        self.pod = pod  # the worker's current view of the pod

    @property
    def namespace(self) -> str:
        return str(self.pod()["metadata"]["namespace"])

    def _read(self, fn: Callable[..., Any], name: str) -> Obj | None:
        try:
            resp = fn(name, self.namespace, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        result: Obj = json.loads(resp.data)
        return result

    def config_map(self, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_config_map, name)

    def secret(self, name: str) -> Obj | None:
        return self._read(self.core.read_namespaced_secret, name)

    def config_map_data(self, name: str) -> dict[str, str] | None:
        obj = self.config_map(name)
        return None if obj is None else dict(obj.get("data") or {})

    def secret_data(self, name: str) -> dict[str, str] | None:
        obj = self.secret(name)
        if obj is None:
            return None
        files = volumes.object_files(obj, binary=True)
        return {k: v.decode(errors="replace") for k, v in files.items()}

    def token(self, service_account: str, audiences: list[str], seconds: int) -> volumes.Grant:
        granted = self.core.create_namespaced_service_account_token(
            service_account, self.namespace, token_request(self.pod(), audiences, seconds)
        )
        status = granted.status
        if status is None or not status.token:
            raise RunnerError(f"no token granted for service account {service_account}")
        expires = status.expiration_timestamp
        at = expires.timestamp() if isinstance(expires, datetime) else time.time() + seconds
        return volumes.Grant(str(status.token), at)

    def fetch(self, issued: Callable[[volumes.TokenFile], None]) -> volumes.Fetch:
        return volumes.Fetch(self.config_map, self.secret, self.token, issued)
