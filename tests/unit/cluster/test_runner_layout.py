"""Pod IPs are allocated from the pod directories, so they survive restarts and free on removal."""

from pathlib import Path

import pytest

from nest_cluster.errors import ClusterError
from nest_cluster.runner.layout import Layout, allocate_ip
from nest_cluster.runner.logs import log_file, rotate


def test_allocate_ip_skips_the_control_plane_and_reuses_holes() -> None:
    assert allocate_ip([]) == "127.0.0.2"
    assert allocate_ip(["127.0.0.2", "127.0.0.4"]) == "127.0.0.3"
    used = [f"127.0.0.{n}" for n in range(2, 256)]
    assert allocate_ip(used) == "127.0.1.0"


def test_claim_is_stable_and_release_frees(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    a = layout.claim("uid-a", "ns", "a", ["c"])
    b = layout.claim("uid-b", "ns", "b", ["c"])
    assert (a.ip, b.ip) == ("127.0.0.2", "127.0.0.3")
    assert Layout(tmp_path).claim("uid-a", "ns", "a", ["c"]).ip == a.ip  # a new runner instance
    layout.pod("uid-a").remove()
    assert layout.claim("uid-c", "ns", "c", ["c"]).ip == "127.0.0.2"


def test_log_file_resolution_and_rotation(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.claim("u1", "ns", "one", ["main"])
    layout.claim("u2", "ns", "two", ["a", "b"])
    rotate(layout.pod("u1"), "main").write_text("first\n")
    rotate(layout.pod("u1"), "main").write_text("second\n")
    assert log_file(tmp_path, "ns/one").read_text() == "second\n"
    assert layout.pod("u1").log("main", previous=True).read_text() == "first\n"
    rotate(layout.pod("u2"), "b").write_text("b\n")
    assert log_file(tmp_path, "ns/two/b").read_text() == "b\n"
    with pytest.raises(ClusterError, match="several containers"):
        log_file(tmp_path, "ns/two")
    with pytest.raises(ClusterError, match="not running on the local node"):
        log_file(tmp_path, "ns/three")
    with pytest.raises(ClusterError, match="no container 'x'"):
        log_file(tmp_path, "ns/one/x")


def test_a_second_cluster_allocates_elsewhere_in_loopback(tmp_path: Path) -> None:
    from nest.dirs import conventional_state
    from nest_cluster.control_plane import first_pod_ip

    assert first_pod_ip(conventional_state()) == "127.0.0.2"
    other = first_pod_ip(tmp_path / "state")
    assert other.startswith("127.") and other.endswith(".0.2") and other != "127.0.0.2"
    assert allocate_ip(["127.9.0.2"], first="127.9.0.2") == "127.9.0.3"
    assert Layout(tmp_path, first_ip=other).claim("u", "ns", "p", ["c"]).ip == other
