"""The sandbox boundary's pure parts: uid allocation, cgroup discovery and values, confinement."""

from __future__ import annotations

import random

import pytest

from isolation import cgroups
from isolation.boundary import (
    DENIED_SYSCALLS,
    OWN_PROCESS,
    SYSTEM_READ_PATHS,
    BoundaryConfig,
    Confinement,
    UidPool,
    parse_uid_range,
    read_paths_for,
)
from isolation.confine import build_seccomp_filter

HOST_MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
28 25 0:25 / /sys/fs/cgroup/cpu rw,nosuid - cgroup cgroup rw,cpu
29 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
"""
HOST_CGROUP = "4:memory:/pods/p1\n8:pids:/pods/p1\n1:cpu:/\n0::/\n"


def test_uid_ranges_parse_inclusively_and_refuse_nonsense() -> None:
    assert parse_uid_range("200000-200002") == range(200000, 200003)
    for bad in ("200000", "0-10", "10-5", "a-b"):
        with pytest.raises(ValueError):
            parse_uid_range(bad)


def test_a_uid_is_never_handed_out_twice_while_in_use() -> None:
    pool = UidPool(range(10, 13))
    a, b = pool.allocate("a"), pool.allocate("b")
    assert a != b and pool.allocate("a") == a  # the same owner (a restart) keeps its uid
    pool.release("a")
    c = pool.allocate("c")
    assert c not in (b,) and pool.in_use == 2


def test_a_retired_uid_never_comes_back() -> None:
    pool = UidPool(range(10, 12))
    first = pool.allocate("a")
    pool.retire("a")
    assert pool.allocate("b") != first
    with pytest.raises(RuntimeError, match="no free sandbox uid"):
        pool.allocate("c")


def test_own_cgroup_on_the_host_hierarchy() -> None:
    layout = cgroups.own_layout(HOST_CGROUP, HOST_MOUNTINFO)
    assert layout is not None and layout.version == 1
    assert layout.dirs == {
        "memory": "/sys/fs/cgroup/memory/pods/p1",
        "pids": "/sys/fs/cgroup/pids/pods/p1",
        "cpu": "/sys/fs/cgroup/cpu",
    }


def test_own_cgroup_through_a_bind_mounted_subtree() -> None:
    """A container that sees only its own cgroup (as a cgroup namespace would show it)."""
    mountinfo = (
        "40 30 0:23 /pods/p1/runtime /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "41 30 0:24 /pods/p1/runtime /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "42 30 0:25 /pods/p1/runtime /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    proc = "4:memory:/pods/p1/runtime\n8:pids:/pods/p1/runtime\n1:cpu,cpuacct:/pods/p1/runtime\n"
    layout = cgroups.own_layout(proc, mountinfo)
    assert layout is not None
    assert layout.dirs["memory"] == "/sys/fs/cgroup/memory"
    assert layout.dirs["cpu"] == "/sys/fs/cgroup/cpu"


def test_own_cgroup_v2_and_none_at_all() -> None:
    mountinfo = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    layout = cgroups.own_layout("0::/kubepods/pod1/c1\n", mountinfo)
    assert layout is not None and layout.version == 2
    assert set(layout.dirs.values()) == {"/sys/fs/cgroup/kubepods/pod1/c1"}
    assert cgroups.own_layout("0::/x\n", "") is None


def test_cgroup_values_follow_the_kubelet_and_runc_conversions() -> None:
    limits = cgroups.Limits(memory_bytes=64 << 20, max_processes=32, cpu_millis=250)
    v1 = cgroups.v1_values(limits)
    assert v1["memory"] == {"memory.limit_in_bytes": str(64 << 20)}
    assert v1["pids"] == {"pids.max": "32"}
    assert v1["cpu"] == {"cpu.shares": "256"}  # 250m -> 256 shares
    v2 = cgroups.v2_values(limits)
    assert v2["memory.max"] == str(64 << 20) and v2["memory.swap.max"] == "0"
    assert v2["cpu.weight"] == str(1 + ((256 - 2) * 9999) // 262142)
    tiny = cgroups.v1_values(cgroups.Limits(None, 8, 1))
    assert tiny["cpu"] == {"cpu.shares": "2"} and tiny["memory"] == {}


def test_a_sandbox_reads_only_its_code_the_interpreter_and_the_system() -> None:
    config = BoundaryConfig(read_paths=("/opt/python",))
    paths = read_paths_for(config, ["/code/fn-a", "/cache/pyc"])
    assert paths[0] == "/opt/python"
    assert {"/code/fn-a", "/cache/pyc", OWN_PROCESS, *SYSTEM_READ_PATHS} <= set(paths)
    # nothing of the pod's runtime, other sandboxes or the node is readable by path
    for forbidden in ("/", "/proc", "/tmp", "/var", "/root", "/run", "/sys", "/home"):
        assert forbidden not in paths
    assert len(paths) == len(set(paths))


def test_confinement_round_trips_through_json() -> None:
    confinement = Confinement(
        uid=200001, gid=200001, scratch="/s/a", read_paths=("/a",), write_paths=("/s/a",),
        cgroup_procs=("/c/cgroup.procs",), max_processes=8, max_open_files=64,
        data_limit=None, seccomp=True, landlock=True,
    )  # fmt: skip
    assert Confinement.from_json(confinement.to_json()) == confinement


def test_the_deny_list_covers_what_issue_9_names() -> None:
    for name in (
        "ptrace", "process_vm_readv", "process_vm_writev", "mount", "unshare", "setns", "bpf",
        "perf_event_open", "keyctl", "kexec_load", "init_module", "finit_module", "reboot",
        "swapon", "settimeofday", "clock_settime",
    ):  # fmt: skip
        assert name in DENIED_SYSCALLS, name
    assert all(DENIED_SYSCALLS.values()), "every denied syscall says why"


def test_the_seccomp_filter_compiles_with_libseccomp() -> None:
    filt = build_seccomp_filter()
    assert filt is not None


def test_pools_over_the_same_range_rarely_hand_out_the_same_uid() -> None:
    # Every pool pod has the same range; lowest-first would give both pods' first sandboxes
    # (different tenants) the same uid on a node whose pods share a process table.
    one = UidPool(range(200000, 300000), random.Random(1))
    two = UidPool(range(200000, 300000), random.Random(2))
    first = {one.allocate(f"a{i}") for i in range(50)}
    second = {two.allocate(f"b{i}") for i in range(50)}
    assert len(first) == len(second) == 50
    assert len(first & second) <= 1
