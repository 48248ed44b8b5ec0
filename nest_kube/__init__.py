"""Nest's shared Kubernetes layer: client factory, informer, Event recorder, the `Api` protocol.

Components (operator, sidecar, gateway, the local runner) meet only at the API server and at
this layer: none imports another, and each reaches Kubernetes through these modules, so a
mechanism (list+watch, credentials, Events) exists once. It imports no component; only `crds`
(for the names of Nest's resources), the kubernetes library (for kubeconfig parsing and the
synchronous client some code still uses) and aiohttp.

    connection = connect(kubeconfig)           # config: in-cluster, kubeconfig or token
    api = HttpApi(connection)                  # http: the Api protocol over aiohttp
    informer = Informer(api, SANDBOXES, label_selector=...)   # informer + store
    recorder = EventRecorder(api, EventSource("nest-sidecar", host=pod))  # recorder
    FakeApi()                                  # fake: the same protocol in memory, for tests
"""

from nest_kube.api import (
    ADDED,
    BOOKMARK,
    DELETED,
    JSON_PATCH,
    MERGE_PATCH,
    MODIFIED,
    Api,
    ApiError,
    Unreachable,
    WatchEvent,
)
from nest_kube.config import ConfigError, Connection, connect
from nest_kube.correlator import Correlator, EventSource, ObjectRef, on_controller
from nest_kube.http import HttpApi
from nest_kube.informer import Backoff, Handler, Informer, handler_funcs
from nest_kube.recorder import NORMAL, WARNING, EventRecorder
from nest_kube.resources import Resource
from nest_kube.store import Delta, Store

__all__ = [
    "ADDED",
    "BOOKMARK",
    "DELETED",
    "JSON_PATCH",
    "MERGE_PATCH",
    "MODIFIED",
    "NORMAL",
    "WARNING",
    "Api",
    "ApiError",
    "Backoff",
    "ConfigError",
    "Connection",
    "Correlator",
    "Delta",
    "EventRecorder",
    "EventSource",
    "Handler",
    "HttpApi",
    "Informer",
    "ObjectRef",
    "Resource",
    "Store",
    "Unreachable",
    "WatchEvent",
    "connect",
    "handler_funcs",
    "on_controller",
]
