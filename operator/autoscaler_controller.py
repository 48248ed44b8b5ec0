"""The autoscaler's I/O shell: observed concurrency in, `/scale` writes out.

For every SandboxDeployment with `spec.autoscaling`, once per tick: scrape the runtimes of the
pool pods and the gateways, turn that into one concurrency sample per deployment, and let its
`Autoscaler` (the pure KPA-like policy) decide. Concurrency is measured by Little's law, not by
sampling a gauge: a runtime's cumulative invocation time (`nest_sandbox_invoke_seconds_sum`)
grows by exactly the average concurrency times the interval, so short requests between two
scrapes are counted; requests still running count through the in-flight gauge, and requests
the gateway's activator is holding (scale from zero) through `nest_gateway_queued`.
Only deployments that enable autoscaling are ever written. Runtime scrapes are signed with the
data-plane key (`nest_operator.dataplane_key`): a runtime's /metrics lists every sandbox it runs,
so it answers only the gateway and the operator.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from crds import Autoscaling, Function
from nest_kube import ApiError
from nest_operator.adapters import DEFAULT_REPLICAS
from nest_operator.autoscaler_policy import Autoscaler, AutoscalerConfig
from nest_operator.dataplane_key import SecretKeys
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store
from sandbox import dataplane_auth as auth

log = logging.getLogger(__name__)
RUNTIME_PORT = 8080
GATEWAY_PORT = 8090
GATEWAY_SELECTOR = "app.kubernetes.io/name=nest-gateway"
METRICS_PATH = "/metrics"
# The CRD's defaults, from the models that declare them.
DEFAULT_CONCURRENCY = int(Function.model_fields["concurrency"].default)


@dataclass(frozen=True)
class RuntimeSample:
    """One runtime scrape: per sandbox UID, cumulative invocation seconds and in flight."""

    busy_seconds: Mapping[str, float]
    in_flight: Mapping[str, float]


def parse_runtime(text: str) -> RuntimeSample:
    busy: dict[str, float] = {}
    in_flight: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sandbox = sample.labels.get("sandbox")
            if sandbox is None:
                continue
            if sample.name == "nest_sandbox_invoke_seconds_sum":
                busy[sandbox] = sample.value
            elif sample.name == "nest_sandbox_in_flight":
                in_flight[sandbox] = sample.value
    return RuntimeSample(busy, in_flight)


def parse_gateway(text: str) -> dict[tuple[str, str], float]:
    """Requests the activator holds, by (namespace, function)."""
    queued: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nest_gateway_queued":
                key = (sample.labels.get("namespace", ""), sample.labels.get("function", ""))
                queued[key] = queued.get(key, 0.0) + sample.value
    return queued


def config_of(deployment: Obj) -> AutoscalerConfig | None:
    """The policy's configuration from spec.autoscaling, parsed with the CRD's own model (its
    defaults included); None when autoscaling is off or the stored value does not fit it."""
    spec = deployment.get("spec") or {}
    scaling = spec.get("autoscaling")
    if not scaling:
        return None
    try:
        parsed = Autoscaling.model_validate(scaling)
    except ValidationError as exc:  # admission refuses these; one that slipped by is skipped
        meta = deployment.get("metadata") or {}
        log.warning("%s/%s: spec.autoscaling ignored: %s", meta.get("namespace"),
                    meta.get("name"), exc)  # fmt: skip
        return None
    function = ((spec.get("template") or {}).get("spec") or {}).get("function") or {}
    return AutoscalerConfig.of(parsed, int(function.get("concurrency") or DEFAULT_CONCURRENCY))


class ConfigCache:
    """`config_of` per deployment, parsed again only when its resourceVersion changes: the tick
    runs every second over every deployment, and a model parse costs more than dict lookups."""

    def __init__(self) -> None:
        self._by_uid: dict[str, tuple[str, AutoscalerConfig | None]] = {}

    def scaled(self, deployments: Iterable[Obj]) -> list[tuple[Obj, AutoscalerConfig]]:
        """The deployments that autoscale, with their configuration; forgets deleted ones."""
        fresh: dict[str, tuple[str, AutoscalerConfig | None]] = {}
        found = []
        for d in deployments:
            meta = d.get("metadata") or {}
            uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
            known = self._by_uid.get(uid)
            # Without a resourceVersion (a test's fake) nothing tells a change: parse each time.
            fresh_enough = bool(version) and known is not None and known[0] == version
            cfg = known[1] if known is not None and fresh_enough else config_of(d)
            fresh[uid] = (version, cfg)
            if cfg is not None:
                found.append((d, cfg))
        self._by_uid = fresh
        return found


@dataclass
class ConcurrencyMeter:
    """Turns successive scrapes into average concurrency per sandbox over each interval."""

    busy: dict[str, float] = field(default_factory=dict)
    at: float | None = None

    def update(self, sample: RuntimeSample, now: float) -> dict[str, float]:
        elapsed = now - self.at if self.at is not None else 0.0
        result = {}
        for uid in set(sample.busy_seconds) | set(sample.in_flight):
            total = sample.busy_seconds.get(uid, 0.0)
            # A sandbox new since the last scrape started within the interval: all its busy time
            # is this interval's (that is how a woken function's first request counts as
            # activity). Only on the very first scrape is history unknown, so it counts nothing.
            grown = total - self.busy.get(uid, 0.0 if self.at is not None else total)
            average = grown / elapsed if elapsed > 0 else 0.0
            result[uid] = max(average, sample.in_flight.get(uid, 0.0))
        self.busy, self.at = dict(sample.busy_seconds), now
        return result


def deployment_concurrency(
    sandbox_uids: Iterable[str], per_sandbox: Mapping[str, float], queued: float
) -> float:
    return sum(per_sandbox.get(uid, 0.0) for uid in sandbox_uids) + queued


class AutoscalerController:
    """Scrapes, decides and scales, once per `interval` seconds."""

    def __init__(self, store: Store, kube: Kube, interval: float = 1.0) -> None:
        self.store = store
        self.kube = kube
        self.interval = interval
        self.namespace = os.environ.get("POD_NAMESPACE", "nest-system")
        self.policies: dict[str, tuple[AutoscalerConfig, Autoscaler]] = {}
        self.meter = ConcurrencyMeter()
        self.configs = ConfigCache()
        self.keys = SecretKeys(kube.core, self.namespace)
        self._refused_logged = 0.0

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.interval / 2))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    await self.tick(http, asyncio.get_running_loop().time())
                except Exception:  # one bad tick must not end autoscaling
                    log.exception("autoscaler tick failed")
                await asyncio.sleep(self.interval)  # the scrape period, not a synchronisation

    async def _get(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
    ) -> str:
        try:
            async with http.get(url, headers=headers) as resp:
                if resp.status == 401:
                    self._refused(url, await resp.text())
                return await resp.text() if resp.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            return ""  # a pod going away mid-scrape: it simply contributes nothing

    def _refused(self, url: str, body: str) -> None:
        """A runtime refused our signature: its sandboxes look idle until the keys agree."""
        self.keys.stale()
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= 60:  # once a minute, not once per pod per tick
            self._refused_logged = now
            log.warning("runtime %s refused the autoscaler's signature: %s", url, body[:200])

    async def _scrape_headers(self) -> dict[str, str] | None:
        ring = await self.keys.ring()
        if ring is None or ring.signing_id is None:
            return None
        return {auth.HEADER: ring.sign("GET", METRICS_PATH)}  # the same for every pod

    async def tick(self, http: aiohttp.ClientSession, now: float) -> None:
        scaled = self.configs.scaled(self.store.all(Kind.DEPLOYMENT))
        if not scaled:
            return
        pods = [p for p in self.store.all(Kind.POD) if (p.get("status") or {}).get("podIP")]
        headers = await self._scrape_headers()
        texts = await asyncio.gather(
            *(
                self._get(
                    http, f"http://{p['status']['podIP']}:{RUNTIME_PORT}{METRICS_PATH}", headers
                )
                for p in pods
            )
        )
        busy: dict[str, float] = {}
        in_flight: dict[str, float] = {}
        for text in texts:
            sample = parse_runtime(text)
            busy.update(sample.busy_seconds)
            in_flight.update(sample.in_flight)
        per_sandbox = self.meter.update(RuntimeSample(busy, in_flight), now)
        queued = await self._gateway_queues(http)
        for d, cfg in scaled:
            await self._decide(d, cfg, per_sandbox, queued, now)

    async def _gateway_queues(self, http: aiohttp.ClientSession) -> dict[tuple[str, str], float]:
        try:
            ips = await self.kube.pod_ips(self.namespace, GATEWAY_SELECTOR)
        except ApiError:
            return {}
        texts = await asyncio.gather(
            *(self._get(http, f"http://{ip}:{GATEWAY_PORT}/metrics") for ip in ips)
        )
        queued: dict[tuple[str, str], float] = {}
        for text in texts:
            for key, value in parse_gateway(text).items():
                queued[key] = queued.get(key, 0.0) + value
        return queued

    async def _decide(
        self,
        d: Obj,
        cfg: AutoscalerConfig,
        per_sandbox: Mapping[str, float],
        queued: Mapping[tuple[str, str], float],
        now: float,
    ) -> None:
        meta = d["metadata"]
        known = self.policies.get(meta["uid"])
        if known is None or known[0] != cfg:
            known = (cfg, Autoscaler(cfg))
            self.policies[meta["uid"]] = known
        policy = known[1]
        uids = [
            s["metadata"]["uid"]
            for rs in self.store.owned(Kind.REPLICASET, meta["uid"])
            for s in self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])
        ]
        held = queued.get((meta["namespace"], meta["name"]), 0.0)
        policy.observe(now, deployment_concurrency(uids, per_sandbox, held))
        current = int(d["spec"].get("replicas", DEFAULT_REPLICAS))
        # The policy is told the current scale, not the ready count: a function the activator
        # just woke has no ready sandbox yet and must not be scaled straight back to zero.
        decision = policy.decide(now, current)
        if decision.replicas == current:
            return
        await self.kube.scale(Kind.DEPLOYMENT, meta["namespace"], meta["name"], decision.replicas)
        message = f"scaled from {current} to {decision.replicas}: {decision.reason}"
        self.kube.event(d, "Normal", "Autoscaled", message)
        log.info("%s/%s %s", meta["namespace"], meta["name"], message)
