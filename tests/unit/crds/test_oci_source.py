"""`source.oci`: a function package by digest, one code source among the others."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crds import CodeSource

REF = "127.0.0.1:5000/nest/team-a@sha256:" + "0" * 64


def test_an_oci_source_alone_is_valid() -> None:
    source = {"oci": {"ref": REF, "pullSecret": "regcred"}}
    assert CodeSource.model_validate(source).to_k8s() == source


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"oci": {"ref": REF}, "path": "/x"}, "exactly one code source"),
        ({"oci": {"ref": "127.0.0.1:5000/nest/team-a:latest"}}, "ref"),
        ({"oci": {"ref": "nest/team-a@sha256:" + "0" * 64}}, "ref"),
        ({"oci": {}}, "ref"),
        ({"oci": {"ref": REF, "pullSecret": ""}}, "pullSecret"),
        ({"oci": {"ref": REF, "tag": "x"}}, "tag"),
    ],
)
def test_bad_oci_sources(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CodeSource.model_validate(source)
