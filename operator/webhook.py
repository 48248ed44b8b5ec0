"""The SandboxRestriction webhook's server: HTTPS in the operator, AdmissionReview v1 in and out.

Why in the operator: it already holds the store the rules read (pool pods and their IPs), so
most requests are decided without a single API call, and every operator replica can serve.
Reviews come in and go out through pydantic models; admission.py decides; webhook_facts.py
answers the rules' questions. The server starts from kopf's startup handler and stops in its
cleanup. A background loop keeps the serving certificate, the caBundle and the Service right
(the pure parts are in webhook_certs.py) and reloads the certificate whenever its Secret
changes, which is how cert-manager's renewals take effect. A lookup that fails denies the
request, as `failurePolicy: Fail` would.

With several replicas on a cluster whose pods live on loopback, the Service can name only one of
them (an ExternalName): a replica takes the route only when the one it names does not answer a
TLS handshake (checked every ROUTE_CHECK_SECONDS), so two live replicas never take it in turns
and a dead one is replaced within seconds. This matters beyond admission: the operator's own
leader-election Lease lives in nest-system, whose Lease writes pass this webhook, so a route left
on a dead leader would keep the standby from taking over.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from nest_operator import admission as adm
from nest_operator import webhook_certs as certs
from nest_operator.store import Store
from nest_operator.webhook_facts import Facts

log = logging.getLogger(__name__)
REVIEW_API = "admission.k8s.io/v1"
STRATEGIC = "application/strategic-merge-patch+json"
BODY_LIMIT = 16 * 1024 * 1024  # object + oldObject of a Sandbox with inline code
ROUTE_CHECK_SECONDS = 2.0  # how often a replica checks that the replica the route names answers
ROUTE_PROBE_TIMEOUT = 1.0  # a TLS handshake on loopback takes milliseconds


@functools.cache
def _probe_context() -> ssl.SSLContext:
    """The route probe's TLS client context, made once: `create_default_context()` parses the
    system CA bundle, and every 2 s that was a tenth of the operator's busy CPU in a profile;
    this one verifies nothing (liveness only: nothing is sent over it), so it loads no CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class WebhookSettings:
    """Where to serve and what to keep, from the environment (deploy/operator sets it)."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 8443
    namespace: str = "nest-system"
    secret: str = "nest-operator-webhook-tls"
    service: str = "nest-operator-webhook"
    configuration: str = "nest-sandbox-restriction"
    self_signed: bool = True  # False: cert-manager (or anyone) provides Secret and caBundle
    selector: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "nest-operator"}
    )
    pod_ip: str | None = None
    resync_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WebhookSettings:
        base = cls()
        pod_ip = env.get("POD_IP") or None
        selector = env.get("NEST_WEBHOOK_SELECTOR")
        return cls(
            enabled=env.get("NEST_WEBHOOK", "off").lower() in ("on", "true", "1"),
            host=env.get("NEST_WEBHOOK_HOST") or pod_ip or base.host,
            port=int(env.get("NEST_WEBHOOK_PORT", base.port)),
            namespace=env.get("NEST_WEBHOOK_NAMESPACE")
            or env.get("POD_NAMESPACE")
            or base.namespace,
            secret=env.get("NEST_WEBHOOK_SECRET", base.secret),
            service=env.get("NEST_WEBHOOK_SERVICE", base.service),
            configuration=env.get("NEST_WEBHOOK_CONFIGURATION", base.configuration),
            self_signed=env.get("NEST_WEBHOOK_CERTIFICATES", "self") == "self",
            selector=dict(kv.split("=", 1) for kv in selector.split(","))
            if selector
            else base.selector,
            pod_ip=pod_ip,
        )


# -- AdmissionReview v1 at the boundary ----------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class GroupVersionResource(_Wire):
    group: str = ""
    version: str = ""
    resource: str


class UserInfo(_Wire):
    username: str = ""
    uid: str = ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}


class AdmissionRequest(_Wire):
    uid: str
    resource: GroupVersionResource
    sub_resource: str = ""
    name: str = ""
    namespace: str = ""
    operation: str
    user_info: UserInfo = UserInfo()
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool | None = None


class AdmissionReview(_Wire):
    api_version: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


class Status(_Wire):
    code: int
    reason: str
    message: str


class AdmissionResponse(_Wire):
    uid: str
    allowed: bool
    status: Status | None = None


class AdmissionReviewResponse(_Wire):
    api_version: str = REVIEW_API
    kind: str = "AdmissionReview"
    response: AdmissionResponse


def to_request(wire: AdmissionRequest) -> adm.Request:
    user = wire.user_info
    obj = wire.object or wire.old_object or {}
    return adm.Request(
        operation=wire.operation,
        group=wire.resource.group,
        resource=wire.resource.resource,
        subresource=wire.sub_resource,
        namespace=wire.namespace,
        # A CREATE with generateName has no name yet; the object's is as good as it gets.
        name=wire.name or str((obj.get("metadata") or {}).get("name") or ""),
        user=adm.User(
            username=user.username,
            uid=user.uid,
            groups=tuple(user.groups),
            extra={k: tuple(v) for k, v in user.extra.items()},
        ),
        obj=wire.object,
        old=wire.old_object,
    )


def to_response(uid: str, verdict: adm.Verdict) -> dict[str, Any]:
    status = (
        None if verdict.allowed else Status(code=403, reason="Forbidden", message=verdict.message)
    )
    body = AdmissionReviewResponse(
        response=AdmissionResponse(uid=uid, allowed=verdict.allowed, status=status)
    )
    return body.model_dump(by_alias=True, exclude_none=True)


# -- the server ----------------------------------------------------------------------------------


class WebhookThread:
    """Runs a WebhookServer on an event loop of its own, in a thread of its own.

    Why: on kopf's loop, admission answers queued behind the controllers' work exactly when the
    controllers were busiest — a 200-replica apply measured 58 ms per Sandbox CREATE and 32 ms per
    UPDATE (the API server waits for each). Its own loop answers between the controllers' steps.
    """

    def __init__(self, server: WebhookServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook", daemon=True)

    async def start(self) -> None:
        self.thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.server.start(), self.loop))

    async def stop(self) -> None:
        stopping = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(stopping), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)


class WebhookServer:
    """Serves /validate over TLS and keeps its certificate, caBundle and Service right."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: WebhookSettings,
        store: Store | None = None,
        config: adm.Config | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.config = config or adm.Config.from_env()
        self.facts = Facts(api, store)
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.material: certs.Material | None = None
        self.serving = False
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._route_task: asyncio.Task[None] | None = None
        self.route_target: str | None = None  # the ExternalName last read (loopback clusters)

    # -- decisions -------------------------------------------------------------------------

    async def review(self, request: adm.Request) -> adm.Verdict:
        try:
            questions = adm.questions(request, self.config)
            answers = await self.facts.answer(request, questions)
            return adm.decide(request, self.config, answers)
        except Exception as exc:  # fail closed, and say why
            log.warning(
                "admission lookup for %s %s/%s failed: %r",
                request.operation,
                request.namespace,
                request.name,
                exc,
            )
            return adm.Verdict(False, f"SandboxRestriction could not decide: {exc!r}"[:1000])

    async def _validate(self, http: web.Request) -> web.Response:
        try:
            review = AdmissionReview.model_validate_json(await http.read())
        except ValidationError as exc:
            return web.json_response({"error": str(exc)[:2000]}, status=400)
        verdict = await self.review(to_request(review.request))
        if not verdict.allowed:
            req = review.request
            log.info(
                "denied %s %s %s/%s by %s: %s",
                req.operation,
                req.resource.resource,
                req.namespace,
                req.name,
                req.user_info.username,
                verdict.message,
            )
        return web.json_response(to_response(review.request.uid, verdict))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve as soon as there is a certificate; keep it (and the route) right afterwards."""
        with contextlib.suppress(Exception):  # the loop retries; the first try just saves time
            await self.reconcile()
        self._task = asyncio.create_task(self._loop(), name="webhook-certificates")
        if certs.is_loopback(self.settings.pod_ip):
            self._route_task = asyncio.create_task(self._check_route(), name="webhook-route")

    async def stop(self) -> None:
        for task in (self._task, self._route_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._runner is not None:
            await self._runner.cleanup()
        self.facts.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=BODY_LIMIT)
        app.router.add_post("/validate", self._validate)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=self.ssl
        )
        await site.start()
        self.serving = True
        log.info(
            "SandboxRestriction serving on https://%s:%d/validate",
            self.settings.host,
            self.settings.port,
        )

    def _load(self, held: certs.Material) -> None:
        # load_cert_chain reads files only; they live for the call, readable by us alone.
        with tempfile.TemporaryDirectory(prefix="nest-webhook-") as tmp:
            crt, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            crt.write_bytes(held.cert)
            key.touch(mode=0o600)
            key.write_bytes(held.key)
            self.ssl.load_cert_chain(crt, key)  # new handshakes use it; old ones carry on
        self.material = held

    async def _loop(self) -> None:
        while True:
            try:
                settled = await self.reconcile()
            except Exception as exc:
                log.warning("webhook certificate/route reconcile failed: %r", exc)
                settled = False
            await asyncio.sleep(self.settings.resync_seconds if settled else 2.0)  # a period

    async def _check_route(self) -> None:
        """Loopback clusters: take the route when the replica it names stopped answering."""
        while True:
            await asyncio.sleep(ROUTE_CHECK_SECONDS)  # a period, not a synchronisation
            target = self.route_target
            if not self.serving or target is None or target == self.settings.pod_ip:
                continue
            if await self._answers(target):
                continue
            log.info("webhook route names %s, which does not answer: checking it", target)
            try:
                configuration = await self._configuration()
                if configuration is not None:
                    await self._route(configuration)
            except Exception as exc:
                log.warning("webhook route check failed: %r", exc)

    async def _answers(self, host: str) -> bool:
        """Whether a webhook server completes a TLS handshake at `host` (a stopped or dead
        process does not; the kernel alone would accept the TCP connection)."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, self.settings.port, ssl=_probe_context()),
                ROUTE_PROBE_TIMEOUT,
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), ROUTE_PROBE_TIMEOUT)
        return True

    async def reconcile(self) -> bool:
        """One pass: Secret (issue or renew), server, caBundle, Service. True when all is well."""
        held = await self._certificate()
        if held is None:
            return False
        if held != self.material:
            self._load(held)
        if not self.serving:
            await self._serve()
        configuration = await self._configuration()
        if configuration is None:  # not installed yet: its Service is wanted the moment it is
            log.debug("ValidatingWebhookConfiguration %s absent", self.settings.configuration)
            return False
        if self.settings.self_signed:
            patch = certs.ca_bundle_patch(configuration, held.ca)
            if patch is not None:
                admreg = client.AdmissionregistrationV1Api(self.api)
                await self.facts.call(
                    admreg.patch_validating_webhook_configuration,
                    self.settings.configuration,
                    patch,
                    _content_type=STRATEGIC,
                )  # merges webhooks by name
                log.info("caBundle of %s set", self.settings.configuration)
        await self._route(configuration)
        return True

    async def _certificate(self) -> certs.Material | None:
        s, core = self.settings, self.facts.core
        names = certs.dns_names(s.service, s.namespace)
        try:
            secret: Any = await self.facts.call(core.read_namespaced_secret, s.secret, s.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            secret = None
        current = certs.secret_data(self.api.sanitize_for_serialization(secret) if secret else None)
        if not s.self_signed:
            return certs.material(current)  # cert-manager's; None until it has issued
        reason = certs.renewal_reason(current, names, dt.datetime.now(dt.UTC))
        if reason is None:
            return certs.material(current)
        log.info("issuing the webhook's serving certificate: %s", reason)
        fresh = certs.new_secret_data(current, names, dt.datetime.now(dt.UTC))
        meta = client.V1ObjectMeta(name=s.secret, namespace=s.namespace)
        encoded: dict[str, bytes | str] = dict(certs.encode(fresh))
        body = client.V1Secret(
            metadata=meta,
            type="kubernetes.io/tls",
            data=encoded,
        )
        try:
            if secret is None:
                await self.facts.call(core.create_namespaced_secret, s.namespace, body)
            else:  # optimistic: another replica renewing at once makes one of us re-read
                meta.resource_version = secret.metadata.resource_version
                await self.facts.call(core.replace_namespaced_secret, s.secret, s.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                return None  # the next pass reads what the other writer stored
            raise
        return certs.material(fresh)

    async def _configuration(self) -> dict[str, Any] | None:
        admreg = client.AdmissionregistrationV1Api(self.api)
        try:
            raw: Any = await self.facts.call(
                admreg.read_validating_webhook_configuration, self.settings.configuration
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        configuration: dict[str, Any] = self.api.sanitize_for_serialization(raw)
        return configuration

    async def _route(self, owner: Mapping[str, Any]) -> None:
        s, core = self.settings, self.facts.core
        desired = certs.desired_service(s.service, s.namespace, s.port, s.selector, s.pod_ip, owner)
        try:
            raw: Any = await self.facts.call(core.read_namespaced_service, s.service, s.namespace)
            current = self.api.sanitize_for_serialization(raw)
        except ApiException as exc:
            if exc.status != 404:
                raise
            current = None
        change = certs.service_change(current, desired)
        spec = (current or {}).get("spec") or {}
        if spec.get("type") == "ExternalName":
            self.route_target = spec.get("externalName")
        if (
            change == "patch"
            and _taken_by_another(current, desired)
            and await self._answers(str(spec["externalName"]))
        ):
            return  # another live replica serves the route: leave it there
        if change is None:
            return
        if change == "recreate":
            await self.facts.call(core.delete_namespaced_service, s.service, s.namespace)
        if change in ("create", "recreate"):
            await self.facts.call(core.create_namespaced_service, s.namespace, desired)
        else:
            await self.facts.call(
                core.patch_namespaced_service,
                s.service,
                s.namespace,
                desired,
                _content_type=STRATEGIC,
            )
        if desired["spec"]["type"] == "ExternalName":
            self.route_target = desired["spec"]["externalName"]
        log.info(
            "webhook Service %s/%s: %s (%s)",
            s.namespace,
            s.service,
            change,
            desired["spec"]["type"],
        )


def _taken_by_another(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Both ExternalName, to different hosts: the route names another replica (the owner and
    ports being right is then not ours to fix either: that replica's loop keeps them)."""
    have, want = (current or {}).get("spec") or {}, desired["spec"]
    return (
        have.get("type") == want["type"] == "ExternalName"
        and bool(have.get("externalName"))
        and have.get("externalName") != want.get("externalName")
    )
