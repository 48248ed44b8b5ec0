"""securityContext resolution follows the kubelet and containerd: users, groups, capabilities."""

from typing import Any

import pytest

from nest_cluster.runner.security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    ConfigError,
    Security,
    capability_set,
    describe,
    mask,
    resolve,
)

LAST_CAP = 40


def _pod(pod_sc: dict[str, Any] | None = None, **container_sc: Any) -> tuple[Any, Any]:
    container = {"name": "main", "securityContext": dict(container_sc)}
    pod = {
        "metadata": {"name": "web", "namespace": "ns", "uid": "u-1"},
        "spec": {"securityContext": pod_sc or {}, "containers": [container]},
    }
    return pod, container


def _resolve(pod_sc: dict[str, Any] | None = None, **container_sc: Any) -> Security:
    pod, container = _pod(pod_sc, **container_sc)
    return resolve(pod, container, LAST_CAP, primary_gid=lambda uid: 100 if uid == 1000 else 0)


def test_default_capabilities_are_containerds_as_a_mask() -> None:
    # The CapEff Docker and containerd give a root container: 00000000a80425fb.
    assert mask(DEFAULT_CAPABILITIES) == 0xA80425FB
    assert set(describe(DEFAULT_CAPABILITIES)) == {
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
        "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
    }  # fmt: skip
    assert _resolve().capabilities == DEFAULT_CAPABILITIES


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"drop": ["ALL"]}, set()),
        ({"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}, {"NET_BIND_SERVICE"}),
        (
            {"drop": ["NET_RAW", "MKNOD"]},
            set(describe(DEFAULT_CAPABILITIES)) - {"NET_RAW", "MKNOD"},
        ),
        ({"add": ["SYS_ADMIN"]}, set(describe(DEFAULT_CAPABILITIES)) | {"SYS_ADMIN"}),
        # containerd applies the named drops after the named adds: drop wins.
        ({"add": ["SYS_PTRACE"], "drop": ["SYS_PTRACE"]}, set(describe(DEFAULT_CAPABILITIES))),
        ({"add": ["ALL"], "drop": ["CHOWN"]}, set(describe(range(LAST_CAP + 1))) - {"CHOWN"}),
        ({"drop": ["all"], "add": ["kill"]}, {"KILL"}),  # names are case-insensitive
    ],
)
def test_add_and_drop_in_containerds_order(caps: dict[str, list[str]], expected: set[str]) -> None:
    assert set(describe(capability_set(caps, privileged=False, last_cap=LAST_CAP))) == expected


def test_privileged_gets_everything_whatever_it_drops() -> None:
    creds = _resolve(privileged=True, capabilities={"drop": ["ALL"]})
    assert creds.capabilities == frozenset(range(LAST_CAP + 1))
    assert creds.privileged


def test_capabilities_the_kernel_does_not_know_are_left_out() -> None:
    assert CAPABILITIES["CHECKPOINT_RESTORE"] not in capability_set({"add": ["ALL"]}, False, 39)


def test_unknown_capability_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown capability 'NOPE'"):
        _resolve(capabilities={"add": ["NOPE"]})


def test_container_user_wins_over_the_pods() -> None:
    creds = _resolve({"runAsUser": 1000, "runAsGroup": 2000}, runAsUser=1234)
    assert (creds.uid, creds.gid) == (1234, 2000)


def test_group_defaults_to_the_users_primary_group_in_the_image() -> None:
    assert _resolve({"runAsUser": 1000}).gid == 100  # from the (injected) passwd lookup
    assert _resolve({"runAsUser": 4321}).gid == 0  # no passwd entry: gid 0, as containerd
    assert (_resolve().uid, _resolve().gid) == (0, 0)


def test_fs_group_then_supplemental_groups_without_duplicates() -> None:
    creds = _resolve({"fsGroup": 2000, "supplementalGroups": [4000, 2000, 5000]})
    assert creds.groups == (2000, 4000, 5000)


def test_no_new_privs_exactly_when_escalation_is_disallowed() -> None:
    assert _resolve(allowPrivilegeEscalation=False).no_new_privs
    assert not _resolve(allowPrivilegeEscalation=True).no_new_privs
    assert not _resolve().no_new_privs


def test_read_only_root_filesystem() -> None:
    assert _resolve(readOnlyRootFilesystem=True).read_only_root
    assert not _resolve().read_only_root


def test_run_as_non_root_refuses_root_with_the_kubelets_messages() -> None:
    with pytest.raises(ConfigError) as implicit:
        _resolve({"runAsNonRoot": True})
    assert str(implicit.value) == (
        'container has runAsNonRoot and image will run as root (pod: "web_ns(u-1)",'
        " container: main)"
    )
    with pytest.raises(ConfigError) as explicit:
        _resolve(runAsNonRoot=True, runAsUser=0)
    assert str(explicit.value) == (
        'container\'s runAsUser breaks non-root policy (pod: "web_ns(u-1)", container: main)'
    )
    assert _resolve({"runAsNonRoot": True, "runAsUser": 1000}).uid == 1000
    # The container's own runAsNonRoot: false lifts the pod's.
    assert _resolve({"runAsNonRoot": True}, runAsNonRoot=False).uid == 0


def test_spec_for_the_shim_is_plain_json() -> None:
    spec = _resolve({"runAsUser": 7}, capabilities={"drop": ["ALL"], "add": ["KILL"]}).to_spec()
    assert spec["uid"] == 7 and spec["capabilities"] == [CAPABILITIES["KILL"]]
