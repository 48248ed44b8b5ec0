"""Container cgroups: where they go, the kubelet's values, and (as root) the real thing."""

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nest_cluster.runner import cgroups
from nest_cluster.runner.cgroups import Support
from nest_cluster.runner.containers import readonly_paths
from tests.kube import wait_for

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
SYSTEMD_V1 = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _choose(mountinfo: str, v2: str = "") -> Support:
    return cgroups.choose(cgroups.parse_mountinfo(mountinfo), lambda _: v2)


def test_v1_hierarchies_are_preferred_when_they_have_every_controller() -> None:
    support = _choose(HYBRID, v2="hugetlb")
    assert support.version == 1 and support.usable
    assert support.dirs == {
        "memory": "/sys/fs/cgroup/memory",
        "cpu": "/sys/fs/cgroup/cpu",
        "pids": "/sys/fs/cgroup/pids",
    }
    assert "/sys/fs/cgroup/unified" in support.points


def test_co_mounted_v1_controllers_share_one_mount_point() -> None:
    support = _choose(SYSTEMD_V1)
    assert support.mount_points["cpu"] == "/sys/fs/cgroup/cpu,cpuacct"


def test_v2_when_the_unified_hierarchy_has_the_controllers() -> None:
    support = _choose(UNIFIED, v2="cpuset cpu io memory pids")
    assert support.version == 2
    assert set(support.dirs.values()) == {"/sys/fs/cgroup"}


def test_no_hierarchy_is_a_problem_with_a_message() -> None:
    support = _choose(UNIFIED, v2="cpu io")
    assert not support.usable and "no cgroup hierarchy" in support.problem
    assert "not enforced" in cgroups.message(support)
    assert cgroups.message(_choose(HYBRID)) == ""


@pytest.mark.parametrize(
    ("resources", "memory", "shares", "quota"),
    [
        ({"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "250m"}},
         "67108864", "256", "50000"),
        ({"limits": {"memory": "2Gi", "cpu": "2"}, "requests": {"cpu": "2"}},
         "2147483648", "2048", "200000"),
        ({"requests": {"cpu": "1m"}}, None, "2", None),  # the kubelet's minimum shares
        ({"limits": {"cpu": "1m"}, "requests": {"cpu": "1m"}}, None, "2", "1000"),  # min quota
        ({}, None, "2", None),  # BestEffort: 2 shares, no quota
    ],
)  # fmt: skip
def test_v1_values_follow_the_kubelet(
    resources: dict[str, dict[str, str]], memory: str | None, shares: str, quota: str | None
) -> None:
    values = cgroups.v1_values({"resources": resources})
    assert values["memory"].get("memory.limit_in_bytes") == memory
    assert values["memory"].get("memory.memsw.limit_in_bytes") == memory  # no swap on top
    assert values["cpu"]["cpu.shares"] == shares
    assert values["cpu"].get("cpu.cfs_quota_us") == quota
    if quota:
        assert values["cpu"]["cpu.cfs_period_us"] == "100000"
    # Memory before memsw: the kernel refuses a memsw limit below the memory limit.
    assert list(values["memory"]) == (["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
                                      if memory else [])  # fmt: skip


def test_v2_values_convert_shares_to_weight_like_runc() -> None:
    values = cgroups.v2_values(
        {"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "1"}}}
    )
    assert values == {
        "memory.max": "67108864",
        "memory.swap.max": "0",
        "cpu.weight": "39",  # 1 + (1024 - 2) * 9999 // 262142
        "cpu.max": "50000 100000",
    }


def test_two_local_clusters_never_share_a_node_cgroup() -> None:
    a = cgroups.node_key("nest-local", "/root/.local/state/nest/cluster/node")
    b = cgroups.node_key("nest-local", "/tmp/other/node")
    assert a != b and a.startswith("nest-local-")
    assert cgroups.pod_path(a, "u1") == f"nest/{a}/podu1"


def test_shim_spec_joins_binds_and_protects_the_limits() -> None:
    cgroup = cgroups.ContainerCgroup(
        version=1,
        dirs={"memory": "/cg/memory/x", "cpu": "/cg/cpu/x", "pids": "/cg/pids/x"},
        mount_points={
            "memory": "/sys/fs/cgroup/memory",
            "cpu": "/sys/fs/cgroup/cpu",
            "pids": "/sys/fs/cgroup/pids",
        },
        written={"/cg/memory/x": ("memory.limit_in_bytes",), "/cg/cpu/x": ("cpu.shares",)},
    )
    spec = cgroup.shim_spec()
    assert spec["procs"] == [f"/cg/{c}/x/cgroup.procs" for c in ("memory", "cpu", "pids")]
    memory = next(b for b in spec["binds"] if b["target"] == "/sys/fs/cgroup/memory")
    assert memory == {"source": "/cg/memory/x", "target": "/sys/fs/cgroup/memory",
                      "protect": ["memory.limit_in_bytes"]}  # fmt: skip
    # Every other cgroup mount, /sys and the cgroup tmpfs are read-only in the container.
    readonly = readonly_paths(_choose(HYBRID), cgroup)
    assert "/sys/fs/cgroup/memory" not in readonly
    assert {"/sys", "/sys/fs/cgroup", "/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/unified"} <= set(
        readonly
    )


# -- the real cgroup fs (root only) -------------------------------------------------------------


@pytest.fixture
def real() -> Iterator[tuple[Support, str]]:
    support = cgroups.discover()
    if os.geteuid() != 0 or not support.usable:
        pytest.skip("needs root and a cgroup fs with memory, cpu and pids")
    node = f"unit-{uuid.uuid4().hex[:8]}"
    support = cgroups.prepare(support, node)
    if not support.usable:
        pytest.skip(support.problem)
    yield support, node
    cgroups.clean_node(support, node)


def test_create_writes_limits_and_delegates_to_the_containers_user(
    real: tuple[Support, str],
) -> None:
    support, node = real
    container = {"resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "500m"}}}
    cgroup = cgroups.create(support, node, "u1", "main-0", container, owner=(1234, 5678))
    if support.version == 1:
        memory = Path(cgroup.dirs["memory"])
        assert (memory / "memory.limit_in_bytes").read_text().strip() == "67108864"
        assert Path(cgroup.dirs["cpu"], "cpu.shares").read_text().strip() == "512"
        assert "memory.limit_in_bytes" in cgroup.written[str(memory)]
    for directory in cgroup.unique_dirs:
        info = Path(directory, "cgroup.procs").stat()
        assert (info.st_uid, info.st_gid) == (1234, 5678)
        assert Path(directory).stat().st_uid == 1234
    assert not cgroups.oom_killed(cgroup)


def test_removal_kills_what_is_inside_and_removes_child_cgroups(
    real: tuple[Support, str],
) -> None:
    support, node = real
    cgroup = cgroups.create(support, node, "u2", "main-0", {}, owner=(0, 0))
    child = Path(cgroup.dirs["memory"], "sandbox-1")
    child.mkdir()  # what a delegated container does
    join = f"echo 0 > {child}/cgroup.procs && exec sleep 600"
    sleeper = subprocess.Popen(["sh", "-c", join])
    try:
        wait_for(lambda: Path(child, "cgroup.procs").read_text().strip(), what="sleep joined")
        assert cgroups.remove_tree(cgroup.dirs["memory"])
        assert sleeper.wait(timeout=10) == -9
        assert not Path(cgroup.dirs["memory"]).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    cgroups.remove(cgroup)
    assert not any(Path(d).exists() for d in cgroup.unique_dirs)
