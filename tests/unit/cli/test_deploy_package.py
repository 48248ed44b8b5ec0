"""`nest deploy DIR` with dependencies: when a package is built, and what gets deployed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nest import functions
from nest.deploy_cmd import packaged, with_package

REF = "127.0.0.1:5000/nest/ns@sha256:" + "1" * 64


def test_a_directory_is_packaged_when_it_declares_dependencies(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(e, c):\n    return 1\n")
    assert not packaged(tmp_path, None)  # plain code stays inline, as before
    assert packaged(tmp_path, True)
    (tmp_path / "requirements.txt").write_text("six\n")
    assert packaged(tmp_path, None)
    assert not packaged(tmp_path, False)
    assert not packaged(tmp_path / "main.py", None)


def test_the_deployment_runs_the_package_and_nothing_inline(tmp_path: Path) -> None:
    stand_in = functions.Code({"main.py": ""}, "api", "main:handler")
    request = functions.function_request(stand_in, functions.DeployOptions(replicas=2))
    deployment = with_package(functions.manifest("ns", request), REF, "regcred")
    function = deployment["spec"]["template"]["spec"]["function"]
    assert function["source"] == {"oci": {"ref": REF, "pullSecret": "regcred"}}
    assert function["handler"] == "main:handler"
    assert deployment["spec"]["replicas"] == 2
    anonymous = with_package(deployment, REF, None)["spec"]["template"]["spec"]["function"]
    assert anonymous["source"] == {"oci": {"ref": REF}}
    with pytest.raises(ValidationError):
        with_package(deployment, "127.0.0.1:5000/nest/ns:latest", None)
