"""The route table: every operation of the gateway's API, declared once.

The HTTP server registers its handlers from this table and the OpenAPI document is generated from
it, so an operation cannot exist in one and not the other (a test checks that every route has a
handler). Each route also names the Kubernetes access it needs — verb, resource, subresource —
which is what the gateway asks the API server about in a SubjectAccessReview: cluster RBAC, not
the gateway, decides who may read, deploy or invoke what.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from crds.constants import DEPLOYMENT_PLURAL, ENDPOINTS_PLURAL, SANDBOX_PLURAL
from nest_api import models as m

FUNCTIONS = "/v1/namespaces/{namespace}/functions"
FUNCTION = FUNCTIONS + "/{name}"
CONTEXTS = "/v1/namespaces/{namespace}/contexts"
# What an uploaded build context is sent as (a .tar.gz); the first is the one documented.
UPLOAD_MEDIA_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream")
TRIGGER_METHODS = ("get", "post", "put", "patch", "delete")
# Invocation is `create` on a subresource the API server does not serve; RBAC still evaluates
# it, so `kubectl create role --verb=create --resource=sandboxdeployments/invoke` grants it.
INVOKE_SUBRESOURCE = "invoke"


@dataclass(frozen=True)
class Access:
    """The Kubernetes permission an operation needs on the function's namespace."""

    verb: str
    resource: str = DEPLOYMENT_PLURAL
    subresource: str = ""
    # Whether the SubjectAccessReview names the function; list and create cannot.
    named: bool = True


@dataclass(frozen=True)
class Route:
    """One operation: where it lives, what it takes and returns, and who may call it."""

    operation_id: str
    methods: tuple[str, ...]
    path: str
    summary: str
    tag: str
    access: Access
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # Invocations: the body and the response are the function's, passed through untouched.
    passthrough: bool = False
    # A raw upload (not JSON): the body's media type, read up to the route's own size limit.
    upload: str | None = None
    # 503 on every route: the API server unreachable (`api-unavailable`) or, during such an
    # outage, a caller the gateway cannot vouch for (`auth-unavailable`), both with Retry-After.
    errors: tuple[int, ...] = (400, 401, 403, 404, 502, 503)


ROUTES: tuple[Route, ...] = (
    Route(
        "createFunction", ("post",), FUNCTIONS,
        "Create a function from uploaded files or a code reference.", "functions",
        Access("create", named=False), body=m.FunctionCreate, response=m.FunctionView, status=201,
        errors=(400, 401, 403, 404, 409, 415, 422, 502, 503),
    ),
    Route(
        "uploadContext", ("post",), CONTEXTS,
        "Upload a function directory (.tar.gz, requirements included) as a build context.",
        "builds", Access("create", named=False), response=m.ContextUpload, status=201,
        upload=UPLOAD_MEDIA_TYPES[0], errors=(400, 401, 403, 413, 415, 502, 503),
    ),
    Route(
        "listFunctions", ("get",), FUNCTIONS, "List the functions of a namespace.", "functions",
        Access("list", named=False), response=m.FunctionList,
    ),
    Route(
        "getFunction", ("get",), FUNCTION,
        "Read a function with its replicas, endpoints and revisions.", "functions",
        Access("get"), response=m.FunctionView,
    ),
    Route(
        "replaceFunction", ("put",), FUNCTION,
        "Replace a function's code and settings (rolls out a new revision).", "functions",
        Access("update"), body=m.FunctionUpdate, response=m.FunctionView,
        errors=(400, 401, 403, 404, 409, 415, 422, 502, 503),
    ),
    Route(
        "deleteFunction", ("delete",), FUNCTION,
        "Delete a function and its sandboxes.", "functions", Access("delete"), status=204,
    ),
    Route(
        "getScale", ("get",), FUNCTION + "/scale", "Read desired and current replicas.", "scale",
        Access("get", subresource="scale"), response=m.Scale,
    ),
    Route(
        "replaceScale", ("put",), FUNCTION + "/scale", "Set the desired replicas.", "scale",
        Access("update", subresource="scale"), body=m.ScaleRequest, response=m.Scale,
        errors=(400, 401, 403, 404, 409, 415, 422, 502, 503),
    ),
    Route(
        "getRolloutStatus", ("get",), FUNCTION + "/rollout", "Rollout status.", "rollout",
        Access("get"), response=m.RolloutStatus,
    ),
    Route(
        "undoRollout", ("post",), FUNCTION + "/rollout:undo",
        "Roll back to the previous (or a given) revision.", "rollout",
        Access("update"), body=m.RolloutUndo, response=m.FunctionView,
        errors=(400, 401, 403, 404, 409, 415, 422, 502, 503),
    ),
    Route(
        "listSandboxes", ("get",), FUNCTION + "/sandboxes", "List a function's sandboxes.",
        "sandboxes", Access("list", resource=SANDBOX_PLURAL, named=False),
        response=m.SandboxItemList,
    ),
    Route(
        "getEndpoints", ("get",), FUNCTION + "/endpoints",
        "Read a function's ready and not-ready sandboxes.", "sandboxes",
        Access("get", resource=ENDPOINTS_PLURAL), response=m.Endpoints,
    ),
    Route(
        "invokeFunction", ("post",), FUNCTION + ":invoke",
        "Invoke a function: the body is the event, the response is the function's.", "invoke",
        Access("create", subresource=INVOKE_SUBRESOURCE), passthrough=True,
        errors=(400, 401, 403, 404, 413, 502, 503, 504),
    ),
    Route(
        "httpTrigger", TRIGGER_METHODS, "/fn/{namespace}/{name}/{path}",
        "HTTP trigger: method, path, query, headers and body pass through to the function.",
        "invoke", Access("create", subresource=INVOKE_SUBRESOURCE), passthrough=True,
        errors=(400, 401, 403, 404, 413, 502, 503, 504),
    ),
)  # fmt: skip
