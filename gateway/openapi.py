"""The OpenAPI 3.1 document of the gateway, generated from the route table and the models.

Never hand-written: components come from pydantic (`models_json_schema`, JSON Schema 2020-12,
which OpenAPI 3.1 uses natively), operations from `gateway.routes`. The generated document is
committed as `gateway/openapi.json` so platforms can read it without a running gateway, and
`nest-gateway openapi --check` (run by the tests) fails when it drifts from the code, as
`nest crds check` does for the CRDs. The docs page is rendered from the same document, offline.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from crds.generate import first_difference
from gateway.errors import PROBLEM_JSON
from gateway.routes import ROUTES, Route
from nest_api import models as m
from nest_api.models import DNS_LABEL_MAX, DNS_LABEL_PATTERN
from sandbox import limits
from sandbox.context import MAX_CONTEXT_BYTES

TITLE = "Nest gateway"
VERSION = "v1"
DESCRIPTION = (
    "Functions on Nest: management for downstream platforms (functions are SandboxDeployments) "
    "and invocation. Authenticate with a Kubernetes bearer token; cluster RBAC decides access "
    "(invoke = verb create on sandboxdeployments/invoke). Errors are RFC 7807 problems."
)
REF = "#/components/schemas/{model}"
FILE_NAME = "openapi.json"
STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "Deleted", 400: "Bad request (names the parameter)",
    401: "Missing or invalid bearer token", 403: "Kubernetes RBAC denies the caller",
    404: "No such function, namespace or revision", 409: "Already exists or changed meanwhile",
    413: "Body too large", 415: "Body is not JSON", 422: "Invalid body (names the field)",
    502: "The API server or the sandbox failed",
    503: "Unavailable, with Retry-After: the API server is unreachable (problem type "
    "`api-unavailable`), or during such an outage the caller is neither remembered nor "
    "verifiable (`auth-unavailable`), or a function at zero has a full activation queue "
    "(`queue-full`)",
    504: "Timed out waiting for a sandbox or for the function",
}  # fmt: skip
# Every operation that reads a body holds it to `sandbox.limits` (the runtimes' too): the
# document says so on those operations, with the defaults (flags --max-body-bytes and
# --max-json-depth change them, on the gateway and the runtimes alike).
_DEPTH = limits.DEFAULT_MAX_JSON_DEPTH
_BYTES = limits.DEFAULT_MAX_BODY_BYTES
BODY_STATUS_TEXT = {
    400: "Bad request: a bad path parameter, a body that is not JSON, or JSON nested more than "
    f"{_DEPTH} levels deep (problem types `invalid-json`, `json-too-deep`)",
    413: f"Body larger than {_BYTES} bytes ({_BYTES // limits.MIB} MiB; "
    "problem type `payload-too-large`)",
}
UPLOAD_STATUS_TEXT = {
    400: "Bad request: the archive is not a .tar.gz, or an entry may not be unpacked (a link, a "
    "device, an absolute or `..` path, a name too long, too many files or bytes); the detail "
    "and `errors[].field` name the entry",
    413: f"Body larger than {MAX_CONTEXT_BYTES} bytes ({MAX_CONTEXT_BYTES // limits.MIB} MiB; "
    "problem type `payload-too-large`)",
    415: "Body is not application/gzip",
    503: "The gateway has no registry to store contexts in (problem type `not-configured`; "
    "the detail names the flag), or the API server is unavailable (`api-unavailable`, "
    "`auth-unavailable`, with Retry-After)",
}
PASSTHROUGH_STATUS_TEXT = {
    400: "Bad request: a bad path parameter, or a JSON body (one starting with `[` or `{`) "
    f"nested more than {_DEPTH} levels deep (problem type `json-too-deep`); other bodies pass "
    "to the function untouched",
    413: BODY_STATUS_TEXT[413],
}


def _error_text(route: Route, code: int) -> str:
    if route.upload is not None:
        return UPLOAD_STATUS_TEXT.get(code, STATUS_TEXT[code])
    if route.passthrough:
        return PASSTHROUGH_STATUS_TEXT.get(code, STATUS_TEXT[code])
    if route.body is not None:
        return BODY_STATUS_TEXT.get(code, STATUS_TEXT[code])
    return STATUS_TEXT[code]


def _error_codes(route: Route) -> list[int]:
    """The route's errors, plus the body limits' 400 and 413 where a body is read."""
    codes = set(route.errors)
    if route.body is not None or route.passthrough:
        codes |= {400, 413}
    return sorted(codes)


def _schemas() -> tuple[dict[Any, Any], dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m.ProblemDetails, "serialization")]
    for route in ROUTES:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.response is not None:
            wanted.append((route.response, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    return refs, dict(sorted(top.get("$defs", {}).items()))


def _parameters(path: str) -> list[dict[str, Any]]:
    params = []
    for name in ("namespace", "name"):
        if "{" + name + "}" in path:
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": f"The {name} (an RFC 1123 label).",
                    "schema": {
                        "type": "string",
                        "pattern": DNS_LABEL_PATTERN,
                        "maxLength": DNS_LABEL_MAX,
                    },
                }
            )
    if "{path}" in path:
        params.append(
            {
                "name": "path",
                "in": "path",
                "required": True,
                "description": "Path passed to the function (may contain '/').",
                "schema": {"type": "string"},
            }
        )
    return params


def _operation(route: Route, method: str, refs: dict[Any, Any]) -> dict[str, Any]:
    op_id = route.operation_id
    if len(route.methods) > 1:
        op_id += method.capitalize()
    access = route.access
    resource = access.resource + (f"/{access.subresource}" if access.subresource else "")
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": route.summary,
        "description": f"Needs Kubernetes permission `{access.verb}` on `{resource}`.",
        "tags": [route.tag],
        "parameters": _parameters(route.path),
    }
    if route.body is not None:
        schema = refs[(route.body, "validation")]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif route.upload is not None:
        op["requestBody"] = {
            "required": True,
            "description": "A gzip-compressed tar of the function directory (`tar -czf - -C "
            "DIR .`): code plus requirements.txt or pyproject.toml.",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in (route.upload, "application/octet-stream")
            },
        }
    elif route.passthrough and method != "get":
        op["requestBody"] = {
            "required": False,
            "description": "Event (invoke) or request body (HTTP trigger), passed through.",
            "content": {"application/json": {"schema": {}}, "*/*": {"schema": {}}},
        }
    success: dict[str, Any] = {"description": STATUS_TEXT[route.status]}
    if route.response is not None:
        schema = refs[(route.response, "serialization")]
        success["content"] = {"application/json": {"schema": schema}}
    elif route.passthrough:
        success["description"] = "The function's response, status and headers passed through."
        success["content"] = {"*/*": {"schema": {}}}
    problem = {"schema": refs[(m.ProblemDetails, "serialization")]}
    responses: dict[str, Any] = {str(route.status): success}
    for code in _error_codes(route):
        responses[str(code)] = {
            "description": _error_text(route, code),
            "content": {PROBLEM_JSON: problem},
        }
    op["responses"] = responses
    return op


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document; deterministic, so regeneration never makes noise."""
    refs, schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        for method in route.methods:
            paths.setdefault(route.path, {})[method] = _operation(route, method, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": VERSION, "description": DESCRIPTION},
        "tags": [{"name": t} for t in dict.fromkeys(r.tag for r in ROUTES)],
        "security": [{"bearerToken": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Kubernetes token (e.g. a ServiceAccount's).",
                }
            },
        },
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def default_path() -> Path:
    return Path(str(resources.files("gateway"))) / FILE_NAME


def write(path: Path | None = None) -> Path:
    target = path or default_path()
    target.write_text(render(document()), encoding="utf-8")
    return target


def check(path: Path | None = None) -> list[str]:
    """How the committed document differs from the code; empty when in sync."""
    source = path or default_path()
    try:
        stored = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{source}: cannot read ({exc.strerror})"]
    except json.JSONDecodeError as exc:
        return [f"{source}: not JSON ({exc})"]
    difference = first_difference(document(), stored)
    return [] if difference is None else [f"{source}: differs from the code at {difference}"]


def docs_html(doc: dict[str, Any]) -> str:
    """A self-contained page listing every operation and schema (no CDN, no script)."""
    esc = html.escape
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = ", ".join(op["responses"])
            rows.append(
                f"<tr><td><code>{esc(method.upper())}</code></td><td><code>{esc(path)}</code>"
                f"</td><td>{esc(op['summary'])}<br><small>{esc(op['description'])}</small></td>"
                f"<td>{esc(codes)}</td></tr>"
            )
    schemas = []
    for name, schema in doc["components"]["schemas"].items():
        body = esc(json.dumps(schema, indent=2))
        schemas.append(f'<details id="{esc(name)}"><summary>{esc(name)}</summary><pre>{body}</pre>')
        schemas.append("</details>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(doc['info']['title'])}</title><style>"
        "body{font-family:sans-serif;margin:2em}td{padding:.3em .6em;vertical-align:top}"
        "tr:nth-child(even){background:#f4f4f4}pre{background:#f8f8f8;padding:.5em}</style>"
        f"</head><body><h1>{esc(doc['info']['title'])} {esc(doc['info']['version'])}</h1>"
        f"<p>{esc(doc['info']['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<h2>Operations</h2><table><tr><th>Method</th><th>Path</th><th>What</th>"
        f"<th>Responses</th></tr>{''.join(rows)}</table>"
        f"<h2>Schemas</h2>{''.join(schemas)}</body></html>"
    )
