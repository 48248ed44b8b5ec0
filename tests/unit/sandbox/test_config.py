"""The runtime's configuration: flags over env over defaults (pure)."""

from __future__ import annotations

import pytest

from sandbox.runtime import parse_config

KEYED = {"NEST_DATAPLANE_KEY_FILE": "/etc/nest/dataplane-key"}


def test_defaults() -> None:
    config = parse_config([], KEYED)
    assert (config.socket, config.host, config.port) == (
        "/tmp/nest-runtime.sock",
        "127.0.0.1",
        8080,
    )
    assert config.preload == config.layers == ()


def test_pod_ip_is_the_default_host() -> None:
    assert parse_config([], {**KEYED, "POD_IP": "127.0.9.3"}).host == "127.0.9.3"


def test_env_overrides_defaults() -> None:
    env = {
        "NEST_RUNTIME_SOCKET": "/run/rt.sock",
        "NEST_RUNTIME_HOST": "0.0.0.0",
        "NEST_RUNTIME_PORT": "9000",
        "POD_IP": "127.0.9.3",
        "NEST_RUNTIME_PRELOAD": "json, decimal",
        "NEST_RUNTIME_LAYERS": "a:B",
        **KEYED,
    }
    config = parse_config([], env)
    assert (config.socket, config.host, config.port) == ("/run/rt.sock", "0.0.0.0", 9000)
    assert (config.preload, config.layers) == (("json", "decimal"), ("a:B",))


def test_flags_override_env() -> None:
    env = {"NEST_RUNTIME_PORT": "9000", "NEST_RUNTIME_LAYERS": "a:B", **KEYED}
    config = parse_config(["--port", "7000", "--layer", "x:Y", "--layer", "z:W"], env)
    assert (config.port, config.layers) == (7000, ("x:Y", "z:W"))


def test_no_data_plane_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config([], {})
    assert exited.value.code == 2
    assert "--dataplane-key-file" in capsys.readouterr().err


def test_key_file_from_env_or_flag_and_explicit_insecure_mode() -> None:
    assert parse_config([], KEYED).dataplane_keys == "/etc/nest/dataplane-key"
    flagged = parse_config(["--dataplane-key-file", "/k"], KEYED)
    assert (flagged.dataplane_keys, flagged.insecure_dataplane) == ("/k", False)
    insecure = parse_config(["--insecure-dataplane"], {})
    assert (insecure.dataplane_keys, insecure.insecure_dataplane) == (None, True)
    assert parse_config([], {"NEST_DATAPLANE_INSECURE": "1"}).insecure_dataplane
