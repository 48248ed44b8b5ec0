"""The workhorse example: one handler per behaviour the tests and benchmarks need."""

import asyncio
import fcntl
import os
import signal
import time

import utils

from sandbox import Response

_hold = []


def handler(event, context):
    if isinstance(event, dict) and "raise" in event:
        raise ValueError(event["raise"])
    return {
        "hello": event.get("name") if isinstance(event, dict) else None,
        "utils": utils.VALUE,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "remaining_ok": context.get_remaining_time_in_millis() > 0,
        "method": context.request.method,
        "path": context.request.path,
        "query": dict(context.request.query),
    }


async def async_handler(event, context):
    await asyncio.sleep(0)
    return {"async": True, "event": event}


def text(event, context):
    return "plain text"


def raw(event, context):
    return b"\x00\x01"


def echo(event, context):
    return event


def unserialisable(event, context):
    return {1, 2}


def response(event, context):
    return Response(201, {"X-Example": "yes"}, {"created": True})


def environment(event, context):
    return {"env": os.environ.get("NEST_EXAMPLE"), "cwd": os.getcwd(), "pid": os.getpid()}


def gate(event, context):
    """Blocks until the caller releases its exclusive lock on `event["gate"]`."""
    with open(event["gate"]) as f:
        fcntl.flock(f, fcntl.LOCK_SH)
    return {"passed": True}


def slow(event, context):
    time.sleep(event["seconds"])
    return {"slept": event["seconds"]}


def allocate(event, context):
    _hold.append(bytearray(event["mb"] * 1024 * 1024))
    time.sleep(event.get("hold_seconds", 0))
    return {"allocated_mb": event["mb"]}


def crash(event, context):
    if event.get("signal"):
        os.kill(os.getpid(), signal.SIGSEGV)
    os._exit(event.get("code", 3))


def noop(event, context):
    return {"ok": True}


async def async_noop(event, context):
    return {"ok": True}
