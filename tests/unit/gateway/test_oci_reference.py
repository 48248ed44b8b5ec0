"""The management API accepts a function package (`code.oci`) as the code of a function."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidInput
from nest_api import convert
from nest_api import models as m

REF = "127.0.0.1:5000/nest/team-a@sha256:" + "a" * 64


def test_a_function_package_by_digest_becomes_the_oci_source() -> None:
    req = m.FunctionCreate.model_validate(
        {"name": "pkg", "handler": "main:handler",
         "code": {"oci": {"ref": REF, "pullSecret": "creds"}}}
    )  # fmt: skip
    source = convert.deployment_for("ns", req).spec.template.spec.function.source
    assert source.oci is not None
    assert (source.oci.ref, source.oci.pull_secret) == (REF, "creds")
    assert source.model_dump(by_alias=True, exclude_none=True) == {
        "oci": {"ref": REF, "pullSecret": "creds"}
    }


@pytest.mark.parametrize("ref", ["127.0.0.1:5000/nest/team-a:latest", "nest/team-a@sha256:ab"])
def test_a_package_not_named_by_digest_is_refused(ref: str) -> None:
    with pytest.raises((InvalidInput, ValueError)):
        req = m.FunctionCreate.model_validate(
            {"name": "pkg", "handler": "main:handler", "code": {"oci": {"ref": ref}}}
        )
        convert.deployment_for("ns", req)
