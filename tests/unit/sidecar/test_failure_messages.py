"""Messages name their cause and fit: one limit, an ellipsis, the start kept; flags parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from crds.sandbox import SandboxPhase, SandboxSpec
from nest_sidecar.errors import describe_exception, describe_validation, shown_name
from nest_sidecar.main import parse_settings
from nest_sidecar.status import MESSAGE_LIMIT, Observed, brief, desired_status


def test_brief_keeps_short_messages_and_cuts_long_ones_at_the_limit() -> None:
    assert brief("ImportError: no module named x") == "ImportError: no module named x"
    long = "CodeFetchFailed: GET http://127.0.0.1/f.zip: " + "x" * 5000
    cut = brief(long)
    assert len(cut) == MESSAGE_LIMIT
    assert cut.startswith("CodeFetchFailed: GET http://127.0.0.1/f.zip: ") and cut.endswith("…")
    assert brief("x" * MESSAGE_LIMIT) == "x" * MESSAGE_LIMIT


def test_status_messages_and_conditions_are_cut_in_one_place() -> None:
    message = "InvalidSpec: " + "y" * 3000
    observed = Observed(
        phase=SandboxPhase.FAILED, generation=1, code_ready=False, code_message=message,
        reason="InvalidSpec", message=message,
    )  # fmt: skip
    status = desired_status({}, observed, datetime.now(UTC))
    assert len(status["message"]) == MESSAGE_LIMIT
    for condition in status["conditions"]:
        assert len(condition.get("message", "")) <= MESSAGE_LIMIT


def test_a_validation_message_names_every_field_and_problem() -> None:
    with pytest.raises(ValidationError) as exc:
        SandboxSpec.model_validate(
            {"podName": "p", "function": {
                "handler": "main:handler", "env": {"1BAD-NAME": "x"},
                "source": {"inline": {"main.py": ""}}}}
        )  # fmt: skip
    message = describe_validation(exc.value)
    assert message.startswith("function.env: env '1BAD-NAME': name must match")
    assert "Value error" not in message and "\n" not in message


def test_names_and_exceptions_are_shown_readably() -> None:
    assert shown_name("main.py") == "'main.py'"
    assert shown_name("a" * 300).endswith("' (300 bytes)")
    assert len(shown_name("a" * 300)) < 80
    assert describe_exception(TimeoutError()) == "TimeoutError"
    assert describe_exception(OSError(28, "No space left on device")) == (
        "OSError: [Errno 28] No space left on device"
    )


def test_fetch_and_cache_flags() -> None:
    env = {"POD_NAME": "p", "POD_UID": "u"}
    default = parse_settings([], env)
    assert (default.fetch_timeouts.connect, default.fetch_timeouts.read) == (30.0, 30.0)
    assert default.code_cache_bytes == 1 << 30
    tuned = parse_settings(
        ["--fetch-connect-timeout=2", "--fetch-read-timeout=3", "--fetch-timeout=9",
         "--code-cache-bytes=512Mi", "--code-cache-idle=5"],
        env,
    )  # fmt: skip
    assert tuned.fetch_timeouts.connect == 2 and tuned.fetch_timeouts.read == 3
    assert tuned.fetch_timeouts.total == 9
    assert tuned.code_cache_bytes == 512 << 20 and tuned.code_cache_idle == 5
    with pytest.raises(SystemExit):
        parse_settings(["--code-cache-bytes=lots"], env)
    with pytest.raises(SystemExit):
        parse_settings(["--fetch-read-timeout=0"], env)
