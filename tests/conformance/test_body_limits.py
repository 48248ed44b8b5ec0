"""What `sandbox.limits` lets through, every backend carries: its limits are below the sandbox's.

The runtime and the gateway refuse larger or deeper bodies before a backend sees them
(tests/unit/sandbox/test_body_limits.py); here the largest and the deepest body they pass reach
the handler intact, decoded, and come back encoded, in every isolation mode.
"""

from __future__ import annotations

from isolation.base import Backend, SandboxSpec, SandboxState
from isolation.contract import Request
from sandbox import limits
from tests.conformance.support import HELLO


async def test_a_body_of_exactly_the_size_limit_reaches_the_handler_intact(
    backend: Backend,
) -> None:
    await backend.create(SandboxSpec("big", HELLO, "main:echo"))
    text = b"a" * (limits.DEFAULT_MAX_BODY_BYTES - 2)
    response = await backend.invoke("big", Request(body=b'"' + text + b'"'))
    assert response.status == 200
    assert response.body == text  # decoded to a str, returned as text
    assert backend.status("big").state is SandboxState.RUNNING


async def test_a_body_nested_exactly_to_the_depth_limit_decodes_and_encodes_back(
    backend: Backend,
) -> None:
    await backend.create(SandboxSpec("deep", HELLO, "main:echo"))
    depth = limits.DEFAULT_MAX_JSON_DEPTH
    nested = b"[" * depth + b"]" * depth
    limits.check_body(nested, limits.DEFAULT_LIMITS)  # what the runtime lets through
    response = await backend.invoke("deep", Request(body=nested))
    assert (response.status, response.body) == (200, nested)
    assert backend.status("deep").state is SandboxState.RUNNING
