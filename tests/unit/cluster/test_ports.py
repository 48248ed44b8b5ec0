"""Ports are part of the cluster's state: reused whenever recorded, never silently re-picked; a
taken one is named with its holder; fresh ones avoid the kernel's ephemeral range."""

import random
import socket

import psutil

from nest_cluster.ports import (
    Holder,
    Ports,
    choose,
    conflicts,
    fresh_range,
    holder_of,
    pick,
    port_free,
    recorded_ports,
    to_check,
)

RECORDED = {
    "ports": {"etcd_client": 11, "etcd_peer": 12, "apiserver": 13, "controller_manager": 14,
              "scheduler": 15},
    "registry": {"port": 16},
}  # fmt: skip
PORTS = Ports(11, 12, 13, 14, 15)


def _never(count: int) -> list[int]:
    raise AssertionError(f"asked for {count} fresh ports")


def test_recorded_ports_are_kept_whatever_runs() -> None:
    assert choose(RECORDED, 16, _never) == (PORTS, 16)


def test_only_a_cluster_without_state_gets_fresh_ports() -> None:
    assert choose({}, None, lambda n: list(range(100, 100 + n))) == (
        Ports(100, 101, 102, 103, 104), 105
    )  # fmt: skip


def test_a_state_from_before_the_registry_gains_only_a_registry_port() -> None:
    older = {"ports": RECORDED["ports"]}
    assert choose(older, None, lambda n: [40000] if n == 1 else _never(n)) == (PORTS, 40000)


def test_an_unusable_record_is_no_record() -> None:
    assert recorded_ports(RECORDED) == PORTS
    assert recorded_ports({"ports": {**RECORDED["ports"], "apiserver": "x"}}) is None
    assert recorded_ports({"ports": {"etcd_client": 1}}) is None
    assert recorded_ports({"ports": [1, 2]}) is None
    assert recorded_ports({}) is None


def test_only_ports_of_components_about_to_start_are_checked() -> None:
    """The case that split the cluster: the API server died, etcd still holds its ports."""
    wanted = to_check(PORTS, 16, running={"etcd", "kube-controller-manager", "registry"})
    assert wanted == {13: ("kube-apiserver", "apiserver"), 15: ("kube-scheduler", "scheduler")}


def test_a_taken_port_is_named_with_its_holder() -> None:
    wanted = to_check(PORTS, 16, running=set())
    holder = Holder(4242, "python3 -m http.server 13", "LISTEN")
    found = conflicts(wanted, lambda p: p != 13, lambda p: holder if p == 13 else None)
    assert len(found) == 1
    assert found[0].startswith("port 13 (apiserver) recorded for kube-apiserver is in use by pid")
    assert "4242 (python3 -m http.server 13, LISTEN)" in found[0]
    unnamed = conflicts(wanted, lambda p: p != 16, lambda p: None)
    assert unnamed and "port 16 (registry)" in unnamed[0] and "cannot name" in unnamed[0]
    assert conflicts(wanted, lambda p: True, lambda p: None) == []


def test_fresh_ports_come_from_below_the_ephemeral_range() -> None:
    assert fresh_range((32768, 60999)) == (10000, 32767)
    assert fresh_range((11000, 60999)) is None  # no room left: the kernel chooses
    taken = {20001}
    ports = pick(5, lambda p: p not in taken, (20000, 20006), random.Random(1), lambda: 0)
    assert len(set(ports)) == 5 and all(20000 <= p <= 20006 and p not in taken for p in ports)
    kernel = iter([50000, 50000, 50001])
    assert pick(2, lambda p: True, None, random.Random(1), lambda: next(kernel)) == [50000, 50001]


def test_the_holder_of_a_real_listener_is_this_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free(port)
        holder = holder_of(port)
        assert holder is not None and holder.pid == psutil.Process().pid
        assert holder.state == psutil.CONN_LISTEN
    assert port_free(port)
