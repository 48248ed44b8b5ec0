"""`nest deploy DIR` records the package's native distributions on the template, for the
scheduler to know them before a namespace-mode sandbox is placed."""

from __future__ import annotations

import json

from crds.constants import NATIVE_DISTRIBUTIONS_ANNOTATION
from nest import functions
from nest.deploy_cmd import with_package

REF = "127.0.0.1:5000/nest/ns@sha256:" + "1" * 64


def test_natives_ride_on_the_template_and_a_new_package_replaces_them() -> None:
    stand_in = functions.Code({"main.py": ""}, "api", "main:handler")
    request = functions.function_request(stand_in, functions.DeployOptions())
    manifest = functions.manifest("ns", request)
    with_natives = with_package(manifest, REF, None, ("numpy==2.0", "MarkupSafe==3.0.2"))
    meta = with_natives["spec"]["template"]["metadata"]
    assert json.loads(meta["annotations"][NATIVE_DISTRIBUTIONS_ANNOTATION]) == [
        "markupsafe==3.0.2", "numpy==2.0"
    ]  # fmt: skip
    assert meta["labels"] == manifest["spec"]["template"]["metadata"]["labels"]  # kept
    pure = with_package(with_natives, REF, None, ())["spec"]["template"]["metadata"]
    assert NATIVE_DISTRIBUTIONS_ANNOTATION not in pure["annotations"]
