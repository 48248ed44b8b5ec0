"""A hostile tenant in a real pool pod: every attack of issue 9, each its own test, each refused.

The attacker (tests/conformance/hostile) and its victims are subprocess Sandboxes bound to the
same pool pod of deploy/ — one victim in the attacker's namespace, one in another namespace —
so every path between co-located tenants is tried where it matters: inside the pod, through the
runtime, the sidecar's files, the pod's data plane and the API server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubernetes import client, config

from isolation import cgroups
from tests.integration.test_sidecar import bind, invoke, running
from tests.kube import Kubectl, wait_for

HOSTILE = Path(__file__).resolve().parents[1] / "conformance" / "hostile" / "main.py"
SECRET = "card-4242-4242-4242-4242"
VICTIM = (
    "import os\n"
    "SECRET = os.environ['SECRET']\n"
    "def handler(event, context):\n"
    "    return {'pid': os.getpid(), 'ppid': os.getppid(), 'cwd': os.getcwd(),\n"
    "            'uid': os.getuid(), 'secret_len': len(SECRET)}\n"
)

pytestmark = pytest.mark.cluster


def inline(source: str) -> dict[str, Any]:
    return {"inline": {"main.py": source}}


@pytest.fixture
def other_namespace(kubeconfig: Path) -> Iterator[str]:
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def pod(nest_pool: list[dict[str, Any]]) -> dict[str, Any]:
    return nest_pool[0]


@pytest.fixture
def scene(kubectl: Kubectl, other_namespace: str, pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """attacker + victim (same namespace) + neighbour (another namespace), all on one pod."""
    env = {"SECRET": SECRET}
    bind(kubectl, "attacker", pod, inline(HOSTILE.read_text()), isolation="subprocess")
    bind(kubectl, "victim", pod, inline(VICTIM), isolation="subprocess", env=env)
    other = Kubectl(kubectl.binary, kubectl.kubeconfig, other_namespace)
    bind(other, "neighbour", pod, inline(VICTIM), isolation="subprocess", env=env)
    objs = {
        "attacker": running(kubectl, "attacker"),
        "victim": running(kubectl, "victim"),
        "neighbour": running(other, "neighbour"),
    }
    for name in ("victim", "neighbour"):
        code, facts = invoke(objs[name], {})
        assert code == 200, facts
        objs[name]["facts"] = facts
    return objs


def attack(scene: dict[str, dict[str, Any]], **event: Any) -> Any:
    code, body = invoke(scene["attacker"], event)
    assert code == 200, body
    return body


@pytest.mark.parametrize("victim", ["victim", "neighbour"])
def test_cannot_read_a_neighbours_memory_environment_or_code(
    scene: dict[str, dict[str, Any]], victim: str
) -> None:
    facts = scene[victim]["facts"]
    memory = attack(scene, op="read_memory", pid=facts["pid"])
    assert memory["proc_mem"]["ok"] is False and memory["process_vm_readv"]["ok"] is False
    for path in (
        f"/proc/{facts['pid']}/environ",
        f"/proc/{facts['pid']}/mem",
        f"{facts['cwd']}/main.py",
    ):
        result = attack(scene, op="read_file", path=path)
        assert result["ok"] is False, (path, result)
    assert attack(scene, op="list_dir", path="/var/lib/nest/code")["ok"] is False


@pytest.mark.parametrize("target", ["victim", "zygote", "runtime"])
def test_cannot_signal_anything_in_the_pod(scene: dict[str, dict[str, Any]], target: str) -> None:
    facts = scene["victim"]["facts"]
    pid = {"victim": facts["pid"], "zygote": facts["ppid"], "runtime": 1}[target]
    assert attack(scene, op="signal_pid", pid=pid, signal=9) == {"ok": False, "errno": "EPERM"}
    code, again = invoke(scene["victim"], {})
    assert code == 200 and again["pid"] == facts["pid"], "the victim still runs, untouched"


def test_cannot_use_the_runtime_control_socket(scene: dict[str, dict[str, Any]]) -> None:
    refused = attack(scene, op="connect_unix", path="/var/run/nest/runtime.sock")
    assert refused["ok"] is False, refused


def test_no_kubernetes_credential_is_readable(scene: dict[str, dict[str, Any]]) -> None:
    for path in (
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/etc/nest/dataplane-key",
    ):
        assert attack(scene, op="read_file", path=path)["ok"] is False, path


def test_cannot_rewrite_code_or_bytecode(scene: dict[str, dict[str, Any]]) -> None:
    victim_code = scene["victim"]["facts"]["cwd"]
    for path in (f"{victim_code}/main.py", f"{victim_code}/evil.py", "/var/lib/nest/tmp/x.pyc"):
        assert attack(scene, op="write_file", path=path)["ok"] is False, path
    scratch = attack(scene, op="identity")["tmpdir"]
    assert attack(scene, op="write_file", path=f"{scratch}/mine")["ok"] is True


def test_runs_as_its_own_unprivileged_principal(scene: dict[str, dict[str, Any]]) -> None:
    me = attack(scene, op="identity")
    uid = int(me["Uid"].split()[0])
    assert uid >= 100_000 and uid != scene["victim"]["facts"]["uid"]
    assert uid != scene["neighbour"]["facts"]["uid"]
    assert int(me["CapEff"], 16) == 0 and int(me["CapPrm"], 16) == 0
    assert (me["NoNewPrivs"], me["Seccomp"], me["dumpable"]) == ("1", "2", 0)
    assert me["Groups"] == ""
    assert (attack(scene, op="unshare", what="user"))["ok"] is False
    assert (attack(scene, op="mount"))["ok"] is False


def test_the_data_plane_refuses_calls_the_gateway_did_not_sign(
    scene: dict[str, dict[str, Any]],
) -> None:
    status = scene["victim"]["status"]
    base = f"http://{status['podIP']}:{status['port']}"
    uid = scene["victim"]["metadata"]["uid"]
    for method, url in (("POST", f"{base}/v1/sandboxes/{uid}/invoke"), ("GET", f"{base}/metrics")):
        answer = attack(scene, op="http", url=url, method=method)
        assert answer["status"] == 401, (url, answer)
        assert SECRET not in answer["body"]


def test_a_fork_bomb_and_a_memory_spike_hurt_only_the_attacker(
    scene: dict[str, dict[str, Any]],
) -> None:
    bomb = attack(scene, op="fork_bomb")
    assert bomb["stopped_by"] == "EAGAIN", bomb
    code, _ = invoke(scene["victim"], {})
    assert code == 200, "the neighbour still answers next to a fork bomb"
    code, body = invoke(scene["attacker"], {"op": "spike", "mb": 1024})
    assert code >= 500, body
    code, again = invoke(scene["neighbour"], {})
    assert code == 200 and again["pid"] == scene["neighbour"]["facts"]["pid"]


def test_attacker_code_never_reaches_the_victims_json(scene: dict[str, dict[str, Any]]) -> None:
    """The victim answers its own facts after every attack above ran in the same pod."""
    code, facts = invoke(scene["victim"], {})
    assert code == 200 and json.dumps(facts).count("pwned") == 0


def test_status_says_which_boundary_holds(scene: dict[str, dict[str, Any]]) -> None:
    conditions = {c["type"]: c for c in scene["attacker"]["status"]["conditions"]}
    isolated = conditions["Isolated"]
    assert isolated["reason"] in ("Confined", "BoundaryReduced"), isolated
    assert isolated["message"], "it says what the boundary is, or what is missing"
    if isolated["status"] == "True":
        assert "seccomp" in isolated["message"] and "Landlock" in isolated["message"]


def _processes_of(uid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        if proc.info["uids"].real == uid and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_a_child_left_holding_memory_dies_with_its_sandbox(
    kubectl: Kubectl, scene: dict[str, dict[str, Any]]
) -> None:
    uid = int(attack(scene, op="identity")["Uid"].split()[0])
    assert attack(scene, op="orphan_holding_memory", mb=32) == {"left": "a grandchild"}
    assert len(_processes_of(uid)) == 2, "the sandbox and the grandchild it left behind"
    kubectl.run("delete", "sbx", "attacker", "--wait=false")
    wait_for(lambda: not _processes_of(uid), timeout=60, what=f"no process of uid {uid} left")


def test_cpu_is_shared_by_request(scene: dict[str, dict[str, Any]]) -> None:
    """Under contention CPU goes by the requests (100m by default): the kernel's cgroup weight."""
    uid = int(attack(scene, op="identity")["Uid"].split()[0])
    (proc,) = _processes_of(uid)
    layout = cgroups.own_layout(
        Path(f"/proc/{proc.pid}/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
    )
    assert layout is not None, "the sandbox is in a cgroup of its own"
    if layout.version != 1:
        pytest.skip("cgroup v2 host: cpu.weight instead of cpu.shares")
    shares = int(Path(layout.dirs["cpu"], "cpu.shares").read_text())
    assert shares == 102  # 100m, as the kubelet converts millicores
