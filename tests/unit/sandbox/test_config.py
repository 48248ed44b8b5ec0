"""The runtime's configuration: flags over env over defaults (pure)."""

from __future__ import annotations

from sandbox.runtime import parse_config


def test_defaults() -> None:
    config = parse_config([], {})
    assert (config.socket, config.host, config.port) == (
        "/tmp/nest-runtime.sock",
        "127.0.0.1",
        8080,
    )
    assert config.preload == config.layers == ()


def test_pod_ip_is_the_default_host() -> None:
    assert parse_config([], {"POD_IP": "10.1.2.3"}).host == "10.1.2.3"


def test_env_overrides_defaults() -> None:
    env = {
        "NEST_RUNTIME_SOCKET": "/run/rt.sock",
        "NEST_RUNTIME_HOST": "0.0.0.0",
        "NEST_RUNTIME_PORT": "9000",
        "POD_IP": "10.1.2.3",
        "NEST_RUNTIME_PRELOAD": "json, decimal",
        "NEST_RUNTIME_LAYERS": "a:B",
    }
    config = parse_config([], env)
    assert (config.socket, config.host, config.port) == ("/run/rt.sock", "0.0.0.0", 9000)
    assert (config.preload, config.layers) == (("json", "decimal"), ("a:B",))


def test_flags_override_env() -> None:
    env = {"NEST_RUNTIME_PORT": "9000", "NEST_RUNTIME_LAYERS": "a:B"}
    config = parse_config(["--port", "7000", "--layer", "x:Y", "--layer", "z:W"], env)
    assert (config.port, config.layers) == (7000, ("x:Y", "z:W"))
