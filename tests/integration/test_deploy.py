"""deploy/ is a valid kustomize base that a real API server accepts as it is."""

from __future__ import annotations

from pathlib import Path

from tests.kube import Kubectl

ROOT = Path(__file__).resolve().parents[2]


def test_the_kustomize_base_passes_a_server_side_dry_run(
    kubectl: Kubectl, nest_crds: list[str]
) -> None:
    result = kubectl.run(
        "apply", "-k", str(ROOT / "deploy"), "--server-side", "--dry-run=server",
        "--force-conflicts", "-o", "name", "--namespace=nest-system",
    )  # fmt: skip
    applied = set(result.stdout.split())
    for expected in (
        "customresourcedefinition.apiextensions.k8s.io/sandboxes.nest.sandbox.dev",
        "deployment.apps/nest-operator",
        "deployment.apps/nest-gateway",
        "deployment.apps/nest-pool",
        "clusterrole.rbac.authorization.k8s.io/nest-operator",
        "clusterrole.rbac.authorization.k8s.io/nest-sidecar",
        "namespace/nest-system",
    ):
        assert expected in applied, result.stdout


def test_every_workload_runs_the_one_image_and_drops_nothing_to_defaults(
    kubectl: Kubectl,
) -> None:
    rendered = kubectl.run("kustomize", str(ROOT / "deploy")).stdout
    images = {line.split("image:")[1].strip() for line in rendered.splitlines() if "image:" in line}
    assert images == {"nest:latest"}
    assert (ROOT / "Dockerfile").is_file()
