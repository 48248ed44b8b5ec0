"""deploy/'s least privilege, read from the manifests: what a reviewer would check by hand.

The local API server (1.20) predates Pod Security admission, so the pool pod's "baseline"
profile is checked here against the profile's published rules, alongside the token and key
placement that the sandbox boundary relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Pod Security Standards, baseline: capabilities a container may add beyond the default set.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_spec(path: Path, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents(path) if d["kind"] == "Deployment"
                and d["metadata"]["name"] == name]  # fmt: skip
    spec: dict[str, Any] = found["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec["containers"]}


def test_the_pool_pod_meets_pod_security_baseline() -> None:
    spec = pod_spec(DEPLOY / "pool" / "deployment.yaml", "nest-pool")
    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert not spec.get(field), field
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    for container in spec["containers"]:
        sc = container.get("securityContext") or {}
        assert not sc.get("privileged")
        assert sc.get("allowPrivilegeEscalation") is False
        assert sc.get("readOnlyRootFilesystem") is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add") or []) <= BASELINE_CAPABILITIES
        assert not [p for p in container.get("ports") or [] if p.get("hostPort")]
    assert (spec.get("securityContext") or {}).get("seccompProfile", {}).get("type") != (
        "Unconfined"
    )


def test_only_the_sidecar_holds_a_service_account_token() -> None:
    spec = pod_spec(DEPLOY / "pool" / "deployment.yaml", "nest-pool")
    assert spec["automountServiceAccountToken"] is False
    mounts = {name: {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
              for name, c in containers(spec).items()}  # fmt: skip
    assert TOKEN_PATH not in mounts["runtime"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    projected = volumes[mounts["sidecar"][TOKEN_PATH]]["projected"]
    token = next(
        s["serviceAccountToken"] for s in projected["sources"] if "serviceAccountToken" in s
    )
    assert token["expirationSeconds"] <= 3600 and token["path"] == "token"
    files = {
        i["path"] for s in projected["sources"] for i in next(iter(s.values())).get("items", [])
    }
    assert files == {"ca.crt", "namespace"}
    (account,) = [
        d for d in documents(DEPLOY / "pool" / "rbac.yaml") if d["kind"] == "ServiceAccount"
    ]
    assert account["automountServiceAccountToken"] is False


def test_the_data_plane_key_reaches_the_runtime_and_the_gateway_only() -> None:
    pool = pod_spec(DEPLOY / "pool" / "deployment.yaml", "nest-pool")
    gateway = pod_spec(DEPLOY / "gateway" / "deployment.yaml", "nest-gateway")
    for spec, holder in ((pool, "runtime"), (gateway, "gateway")):
        (volume,) = [v for v in spec["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "nest-dataplane-key"
        assert volume["secret"]["defaultMode"] == 0o400
        for name, container in containers(spec).items():
            mounted = [m for m in container.get("volumeMounts") or []
                       if m["name"] == volume["name"]]  # fmt: skip
            assert bool(mounted) == (name == holder), name
            assert all(m.get("readOnly") for m in mounted)
    runtime = containers(pool)["runtime"]
    code = next(m for m in runtime["volumeMounts"] if m["name"] == "code")
    assert code.get("readOnly") is True  # sandboxes cannot rewrite the code cache


def test_network_policies_cover_each_component_and_are_in_the_base() -> None:
    policies = {
        d["metadata"]["name"]: d["spec"] for d in documents(DEPLOY / "networkpolicies.yaml")
    }
    assert set(policies) == {"nest-pool", "nest-gateway", "nest-operator"}
    pool_rules = {r["ports"][0]["port"]: r["from"] for r in policies["nest-pool"]["ingress"]}
    callers = {port: {f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in froms}
               for port, froms in pool_rules.items()}  # fmt: skip
    assert callers == {8080: {"nest-gateway", "nest-operator"}, 8081: {"nest-operator"}}
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert {"networkpolicies.yaml", "dataplane-key.yaml"} <= set(base["resources"])


def test_the_operator_may_create_secrets_but_read_only_the_key() -> None:
    (role,) = [d for d in documents(DEPLOY / "dataplane-key.yaml") if d["kind"] == "Role"]
    rules = {tuple(r["verbs"]): r.get("resourceNames") for r in role["rules"]}
    assert rules == {("create",): None, ("get",): ["nest-dataplane-key"]}
