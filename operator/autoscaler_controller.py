"""The autoscaler's I/O shell: observed concurrency in, `/scale` writes out.

For every SandboxDeployment with `spec.autoscaling`, once per tick: scrape the runtimes of the
pool pods and the gateways, turn that into one concurrency sample per deployment, and let its
`Autoscaler` (the pure KPA-like policy) decide. Concurrency is measured by Little's law, not by
sampling a gauge: a runtime's cumulative invocation time (`nest_sandbox_invoke_seconds_sum`)
grows by exactly the average concurrency times the interval, so short requests between two
scrapes are counted; requests still running count through the in-flight gauge, and requests
the gateway's activator is holding (scale from zero) through `nest_gateway_queued`.
Runtime scrapes are signed with the data-plane key (`nest_operator.dataplane_key`): a runtime's
/metrics lists every sandbox it runs, so it answers only the gateway and the operator.

This is the only writer of `/scale` besides users (issue 12: one owner per decision). The
gateways report demand, they do not scale: each serves a demand stream that this controller
follows (`nest_operator.demand_client`), and a line saying a function has requests held runs
that deployment's decision at once, between ticks: the policy for an autoscaled one, a wake to
one sandbox for one without autoscaling at zero (what the activator used to patch itself). A
demand line only ever scales up; a write is skipped when the replicas already suffice, and a
write in flight counts as done (`_pending`), so several gateways reporting one cold function
make one write. The periodic scrape stays the ground truth: a lost stream costs one tick.

Policies keep their samples across configuration changes (`Autoscaler.reconfigure`), and after
this controller starts, a deployment that already existed gets a conservative policy (no
decrease until it has observed a full stable window: its current scale may rest on demand this
process never saw, as Knative's autoscaler starts in panic mode). A deployment first seen later
was created after the start: its scale is its creator's, there is no history to lose, so its
policy decides freely from the first sample.
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
from nest_operator.autoscaler_policy import Autoscaler, AutoscalerConfig, wake_target
from nest_operator.dataplane_key import SecretKeys
from nest_operator.demand_client import DEMAND_PATH, DemandStreams, FunctionKey, Held, total_held
from nest_operator.kube import Kube
from nest_operator.store import Kind, Obj, Store, key_of
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

    def _entry(self, d: Obj) -> tuple[str, tuple[str, AutoscalerConfig | None]]:
        meta = d.get("metadata") or {}
        uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
        known = self._by_uid.get(uid)
        # Without a resourceVersion (a test's fake) nothing tells a change: parse each time.
        if version and known is not None and known[0] == version:
            return uid, known
        return uid, (version, config_of(d))

    def of(self, d: Obj) -> AutoscalerConfig | None:
        """One deployment's configuration (None: it does not autoscale)."""
        uid, entry = self._entry(d)
        self._by_uid[uid] = entry
        return entry[1]

    def scaled(self, deployments: Iterable[Obj]) -> list[tuple[Obj, AutoscalerConfig]]:
        """The deployments that autoscale, with their configuration; forgets deleted ones."""
        fresh: dict[str, tuple[str, AutoscalerConfig | None]] = {}
        found = []
        for d in deployments:
            uid, entry = self._entry(d)
            fresh[uid] = entry
            if entry[1] is not None:
                found.append((d, entry[1]))
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
    """Scrapes, decides and scales once per `interval` seconds, and at once on demand lines."""

    def __init__(self, store: Store, kube: Kube, interval: float = 1.0) -> None:
        self.store = store
        self.kube = kube
        self.interval = interval
        self.namespace = os.environ.get("POD_NAMESPACE", "nest-system")
        self.gateway_port = GATEWAY_PORT
        self.policies: dict[str, Autoscaler] = {}
        self.meter = ConcurrencyMeter()
        self.configs = ConfigCache()
        self.keys = SecretKeys(kube.core, self.namespace)
        self.streams = DemandStreams(
            self.on_demand, self._stream_headers, on_refused=lambda: self.keys.stale()
        )
        self.demand: dict[str, Held] = {}  # per gateway (base URL): its last demand line
        self._per_sandbox: Mapping[str, float] = {}  # the last tick's concurrency per sandbox
        # A scale written but not yet seen by the watch: uid → (resourceVersion it was decided
        # on, replicas written). Counted as the current scale until the store moves past it.
        self._pending: dict[str, tuple[str, int]] = {}
        self._started: float | None = None
        self._preexisting: frozenset[str] = frozenset()
        self._refused_logged = 0.0

    def begin(self, now: float) -> None:
        """Mark the start (after the store synced): deployments present now get a
        conservative policy if one is made within their first stable window from here."""
        self._started = now
        self._preexisting = frozenset(
            str(d["metadata"].get("uid", "")) for d in self.store.all(Kind.DEPLOYMENT)
        )

    async def run(self) -> None:
        self.begin(asyncio.get_running_loop().time())
        timeout = aiohttp.ClientTimeout(total=max(0.2, self.interval / 2))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                while True:
                    try:
                        await self.tick(http, asyncio.get_running_loop().time())
                    except Exception:  # one bad tick must not end autoscaling
                        log.exception("autoscaler tick failed")
                    await asyncio.sleep(self.interval)  # the scrape period, not a synchronisation
        finally:
            await self.streams.close()

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

    async def _signed(self, path: str) -> dict[str, str] | None:
        ring = await self.keys.ring()
        if ring is None or ring.signing_id is None:
            return None
        return {auth.HEADER: ring.sign("GET", path)}  # the same for every pod

    async def _stream_headers(self) -> dict[str, str] | None:
        return await self._signed(DEMAND_PATH)

    async def tick(self, http: aiohttp.ClientSession, now: float) -> None:
        deployments = self.store.all(Kind.DEPLOYMENT)
        scaled = self.configs.scaled(deployments)
        # Versions before the scrape: a count scraped from a gateway may be gone by the time it
        # is acted on (the request served, the user scaled to zero since); a wake is written
        # only for a deployment unchanged since, and only if it still is (a precondition).
        seen = {key_of(d): str(d["metadata"].get("resourceVersion", "")) for d in deployments}
        # Gateways first, always: demand for a function without autoscaling wakes it too.
        queued = await self._gateway_queues(http)
        if scaled:
            self._per_sandbox = await self._runtime_concurrency(http, now)
        live = {d["metadata"]["uid"] for d, _ in scaled}
        self.policies = {uid: p for uid, p in self.policies.items() if uid in live}
        for listed, _ in scaled:
            # As the store has it now, not as listed before the scrapes: a demand line may
            # have scaled it meanwhile (its write is in the store, written through).
            d = self._fresh(listed)
            cfg = self.configs.of(d) if d is not None else None
            if d is not None and cfg is not None:
                await self._decide(d, cfg, queued, now)
        for (ns, name), held in queued.items():
            fixed = self.store.get(Kind.DEPLOYMENT, f"{ns}/{name}")
            if fixed is None or held <= 0 or self.configs.of(fixed) is not None:
                continue
            if seen.get(key_of(fixed)) == str(fixed["metadata"].get("resourceVersion", "")):
                await self._wake(fixed, held)

    async def _runtime_concurrency(
        self, http: aiohttp.ClientSession, now: float
    ) -> dict[str, float]:
        pods = [p for p in self.store.all(Kind.POD) if (p.get("status") or {}).get("podIP")]
        headers = await self._signed(METRICS_PATH) if pods else None
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
        return self.meter.update(RuntimeSample(busy, in_flight), now)

    async def _gateway_queues(self, http: aiohttp.ClientSession) -> dict[tuple[str, str], float]:
        try:
            ips = await self.kube.pod_ips(self.namespace, GATEWAY_SELECTOR)
        except ApiError:
            return {}
        bases = [f"http://{ip}:{self.gateway_port}" for ip in ips]
        self.streams.track(bases)  # the same gateways, followed between ticks
        texts = await asyncio.gather(*(self._get(http, base + METRICS_PATH) for base in bases))
        queued: dict[tuple[str, str], float] = {}
        for text in texts:
            for key, value in parse_gateway(text).items():
                queued[key] = queued.get(key, 0.0) + value
        return queued

    # -- demand lines, between ticks -----------------------------------------------------------

    async def on_demand(self, gateway: str, held: Held) -> None:
        """A gateway's demand line (empty: its stream ended): decide for what it holds."""
        if held:
            self.demand[gateway] = held
        else:
            self.demand.pop(gateway, None)
        now = asyncio.get_running_loop().time()
        for key in held:
            await self._activate(key, now)

    async def _activate(self, key: FunctionKey, now: float) -> None:
        d = self.store.get(Kind.DEPLOYMENT, f"{key[0]}/{key[1]}")
        if d is None:
            return  # not in the store yet: the next line or tick finds it
        held = total_held(self.demand, key)
        cfg = self.configs.of(d)
        if cfg is None:
            await self._wake(d, held)
            return
        policy = self._policy(d, cfg, now)
        policy.observe(now, self._concurrency(d, self._per_sandbox, held))
        current = self._replicas(d)
        decision = policy.decide(now, current)
        if decision.replicas > current:  # demand only ever adds; decreases wait for a tick
            await self._scale(d, current, decision.replicas, f"{decision.reason} (demand)")

    async def _wake(self, d: Obj, held: float) -> None:
        """A fixed-scale deployment's scale is its user's: woken only from zero, and only from
        the version the demand was seen against (never over a scale not seen yet)."""
        current = self._replicas(d)
        target = wake_target(current, held)
        if target is not None:
            reason = "requests held at zero (no autoscaling)"
            await self._scale(d, current, target, reason, guarded=True)

    # -- deciding and writing ------------------------------------------------------------------

    def _policy(self, d: Obj, cfg: AutoscalerConfig, now: float) -> Autoscaler:
        uid = d["metadata"]["uid"]
        policy = self.policies.get(uid)
        if policy is None:
            started = self._started
            conservative = (
                started is not None
                and uid in self._preexisting
                and now - started < cfg.stable_window_seconds
            )
            policy = Autoscaler(cfg, conservative_from=now if conservative else None)
            self.policies[uid] = policy
        elif policy.config != cfg:
            policy.reconfigure(cfg)  # keeps what it has observed
        return policy

    def _fresh(self, d: Obj) -> Obj | None:
        """The store's current version of `d` (None: deleted, or another object by now)."""
        now = self.store.get(Kind.DEPLOYMENT, key_of(d))
        if now is None or now["metadata"].get("uid") != d["metadata"].get("uid"):
            return None
        return now

    def _concurrency(self, d: Obj, per_sandbox: Mapping[str, float], held: float) -> float:
        uids = [
            s["metadata"]["uid"]
            for rs in self.store.owned(Kind.REPLICASET, d["metadata"]["uid"])
            for s in self.store.owned(Kind.SANDBOX, rs["metadata"]["uid"])
        ]
        return deployment_concurrency(uids, per_sandbox, held)

    def _replicas(self, d: Obj) -> int:
        """The scale to decide from: the stored one, or what we wrote and the store has not
        shown yet (a second gateway's line must not write the same scale again)."""
        meta = d["metadata"]
        stored = int(d["spec"].get("replicas", DEFAULT_REPLICAS))
        pending = self._pending.get(meta["uid"])
        if pending is None:
            return stored
        if pending[0] == str(meta.get("resourceVersion", "")):
            return pending[1]
        del self._pending[meta["uid"]]  # the store moved on: it shows ours, or someone's after
        return stored

    async def _decide(
        self,
        d: Obj,
        cfg: AutoscalerConfig,
        queued: Mapping[tuple[str, str], float],
        now: float,
    ) -> None:
        meta = d["metadata"]
        policy = self._policy(d, cfg, now)
        held = queued.get((meta["namespace"], meta["name"]), 0.0)
        policy.observe(now, self._concurrency(d, self._per_sandbox, held))
        current = self._replicas(d)
        # The policy is told the current scale, not the ready count: a function just woken
        # from zero has no ready sandbox yet and must not be scaled straight back to zero.
        decision = policy.decide(now, current)
        if decision.replicas != current:
            await self._scale(d, current, decision.replicas, decision.reason)

    async def _scale(
        self, d: Obj, current: int, replicas: int, reason: str, guarded: bool = False
    ) -> None:
        """Write the scale; `guarded`: only onto the version decided from."""
        meta = d["metadata"]
        uid, version = meta["uid"], str(meta.get("resourceVersion", ""))
        # Counted before the await: a line handled meanwhile sees the scale as written.
        self._pending[uid] = (version, replicas)
        try:
            await self.kube.scale(Kind.DEPLOYMENT, meta["namespace"], meta["name"], replicas,
                                  resource_version=version if guarded else "")  # fmt: skip
        except ApiError as exc:
            self._pending.pop(uid, None)
            if guarded and exc.status == 409:  # changed meanwhile: decide again on what it is
                log.debug("%s/%s changed before its wake was written", meta["namespace"],
                          meta["name"])  # fmt: skip
                return
            log.warning("%s/%s: scaling to %d failed: %s", meta["namespace"], meta["name"],
                        replicas, exc.message)  # fmt: skip
            return
        message = f"scaled from {current} to {replicas}: {reason}"
        self.kube.event(d, "Normal", "Autoscaled", message)
        log.info("%s/%s %s", meta["namespace"], meta["name"], message)
