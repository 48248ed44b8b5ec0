"""The package format both sides share: references, transport choice, manifest verification."""

from __future__ import annotations

import base64
import json
import re

import pytest

from crds.validation import OCI_REF_PATTERN
from sandbox.layers import (
    CODE_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    DEPENDENCIES_MEDIA_TYPE,
    Credentials,
    Descriptor,
    PackageError,
    Reference,
    credentials_for,
    manifest_json,
    parse_manifest,
    plain_http,
    sha256_digest,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "registry", "repository"),
    [
        (f"127.0.0.1:5000/nest/team-a@{DIGEST}", "127.0.0.1:5000", "nest/team-a"),
        (f"registry.example.com/fn@{DIGEST}", "registry.example.com", "fn"),
        (f"[::1]:5000/a/b.c/d__e@{DIGEST}", "[::1]:5000", "a/b.c/d__e"),
    ],
)
def test_references_are_registry_repository_and_digest(
    ref: str, registry: str, repository: str
) -> None:
    parsed = Reference.parse(ref)
    assert (parsed.registry, parsed.repository, parsed.digest) == (registry, repository, DIGEST)
    assert str(parsed) == ref
    assert re.match(OCI_REF_PATTERN, ref)


@pytest.mark.parametrize(
    "ref",
    [
        "127.0.0.1:5000/nest/team-a:latest",  # a tag can move under a running function
        f"nest/team-a@{DIGEST}".replace("nest/", ""),  # no registry
        f"127.0.0.1:5000/Nest@{DIGEST}",  # repositories are lower case
        "127.0.0.1:5000/nest@sha256:abc",
        f"127.0.0.1:5000/nest@{DIGEST} ",
    ],
)
def test_anything_but_a_digest_reference_is_refused(ref: str) -> None:
    with pytest.raises(PackageError) as caught:
        Reference.parse(ref)
    assert caught.value.permanent


@pytest.mark.parametrize(
    ("registry", "plain"),
    [
        ("127.0.0.1:5000", True),
        ("127.0.0.9:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("127.0.0.1.example.com", False),
    ],
)
def test_plain_http_only_on_loopback(registry: str, plain: bool) -> None:
    assert plain_http(registry) is plain


def _manifest(layers: list[Descriptor]) -> bytes:
    config = Descriptor(CONFIG_MEDIA_TYPE, DIGEST, 2)
    return json.dumps(manifest_json(config, layers)).encode()


def test_a_manifest_is_accepted_only_for_its_own_digest() -> None:
    deps = Descriptor(DEPENDENCIES_MEDIA_TYPE, DIGEST, 10)
    code = Descriptor(CODE_MEDIA_TYPE, DIGEST, 5, {"org.opencontainers.image.title": "code"})
    raw = _manifest([deps, code])
    config, layers = parse_manifest(raw, sha256_digest(raw))
    assert config.media_type == CONFIG_MEDIA_TYPE
    assert [(layer.media_type, layer.size) for layer in layers] == [
        (DEPENDENCIES_MEDIA_TYPE, 10), (CODE_MEDIA_TYPE, 5),
    ]  # fmt: skip
    with pytest.raises(PackageError, match="another digest") as caught:
        parse_manifest(raw + b" ", sha256_digest(raw))
    assert caught.value.permanent


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([Descriptor(DEPENDENCIES_MEDIA_TYPE, DIGEST, 1)], "exactly one code layer"),
        (
            [
                Descriptor(CODE_MEDIA_TYPE, DIGEST, 1),
                Descriptor(DEPENDENCIES_MEDIA_TYPE, DIGEST, 1),
            ],
            "the last",
        ),
        ([Descriptor("application/x-evil", DIGEST, 1)], "unknown layer media types"),
        ([Descriptor(CODE_MEDIA_TYPE, "sha256:short", 1)], "sha256 digest"),
        ([Descriptor(CODE_MEDIA_TYPE, DIGEST, -1)], "size"),
    ],
)
def test_manifests_that_are_no_nest_package_are_refused(
    layers: list[Descriptor], message: str
) -> None:
    raw = _manifest(layers)
    with pytest.raises(PackageError, match=message):
        parse_manifest(raw, sha256_digest(raw))


def test_an_image_is_not_a_package() -> None:
    doc = manifest_json(Descriptor("application/vnd.oci.image.config.v1+json", DIGEST, 2), [])
    raw = json.dumps(doc).encode()
    with pytest.raises(PackageError, match="not a Nest function package"):
        parse_manifest(raw, sha256_digest(raw))


def test_pull_secret_credentials_for_the_registry() -> None:
    auth = base64.b64encode(b"robot:s3cr:et").decode()
    secret = json.dumps(
        {
            "auths": {
                "reg.example.com": {"auth": auth},
                "other:5000": {"username": "u", "password": "p"},
            }
        }
    ).encode()
    assert credentials_for(secret, "reg.example.com") == Credentials("robot", "s3cr:et")
    assert credentials_for(secret, "other:5000") == Credentials("u", "p")
    assert credentials_for(secret, "elsewhere") is None
    with pytest.raises(PackageError, match="dockerconfigjson"):
        credentials_for(b"not json", "reg.example.com")
