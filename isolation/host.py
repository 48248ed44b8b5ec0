"""Hosting one loaded function: hooks, invocation, and load-error classification.

Why: both backends run the same code around a handler — the namespace backend in the runtime
process, the subprocess backend in the forked child — so the hook order, the event decoding and
the error-to-500 rule are written once, here, and cannot drift between isolation modes.

Hook order (documented in docs/isolation.md and tested by the conformance suite):
  create:  layer.function_start (layer order) -> module @on_function_start (definition order)
  invoke:  layer.before_invoke (layer order) -> module @before_invoke -> handler
           -> module @after_invoke -> layer.after_invoke (reverse layer order)
  stop:    module @on_close -> layer.close (reverse layer order)
Layers wrap functions like onion skins: the first layer sees the request first and the response
last. A before-hook returning a `Response` skips the handler (and later before-hooks); every
after-hook still runs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar

from isolation.contract import (
    HOOK_ATTR,
    Context,
    FunctionInfo,
    HookKind,
    InvalidEvent,
    Request,
    Response,
    bad_request,
    decode_event,
    error_response,
    to_response,
)
from isolation.errors import LoadError, ThreadsExhausted
from isolation.interfaces import (
    Interface,
    MalformedResponse,
    apigateway_v1_event,
    apigateway_v1_response,
    apigateway_v2_event,
    apigateway_v2_response,
    malformed,
)
from isolation.streams import Chunks, Streamed, aiter_chunks, iter_chunks
from isolation.webapps import Lifespan, asgi_scope, call_asgi, call_wsgi, wsgi_environ

RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]
BlockOn = Callable[[Awaitable[Any]], Any]
Hook = Callable[..., Any]

function_log = logging.getLogger("nest.function")
T = TypeVar("T")


def parse_handler(handler: str) -> tuple[str, str]:
    """`module:function`, or Lambda's `module.function`."""
    module, sep, attr = handler.partition(":")
    if not sep:
        module, _, attr = handler.rpartition(".")
    if not module or not attr:
        raise LoadError("HandlerNotFound", f"handler {handler!r} is not 'module:function'")
    return module, attr


def classify_load_error(exc: BaseException, handler: str) -> LoadError:
    if isinstance(exc, LoadError):
        return exc
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else "unknown location"
        return LoadError("SyntaxError", f"{exc.msg} ({where})")
    if isinstance(exc, ImportError):
        return LoadError("ImportError", f"{type(exc).__name__}: {exc}")
    return LoadError("Error", f"loading {handler!r} raised {type(exc).__name__}: {exc}")


def load_layers(specs: Iterable[str]) -> list[Any]:
    """Import runtime-level hook objects ("module:attribute"; classes are instantiated)."""
    layers = []
    for spec in specs:
        module, attr = parse_handler(spec)
        obj = getattr(importlib.import_module(module), attr)
        layers.append(obj() if isinstance(obj, type) else obj)
    return layers


def _layer_hooks(layers: list[Any], kind: HookKind) -> list[Hook]:
    return [h for h in (getattr(layer, kind.value, None) for layer in layers) if callable(h)]


@dataclass(frozen=True, slots=True)
class Hooks:
    function_start: tuple[Hook, ...] = ()
    before_invoke: tuple[Hook, ...] = ()
    after_invoke: tuple[Hook, ...] = ()
    close: tuple[Hook, ...] = ()

    @classmethod
    def collect(cls, module: ModuleType, layers: list[Any]) -> Hooks:
        own: dict[HookKind, list[Hook]] = {kind: [] for kind in HookKind}
        for value in vars(module).values():
            try:
                kind = getattr(value, HOOK_ATTR, None)
            except Exception:  # a proxy that resolves on access (Flask's `request`): no hook
                continue
            if kind is not None and callable(value):
                own[HookKind(kind)].append(value)

        def outer(kind: HookKind) -> list[Hook]:
            return _layer_hooks(layers, kind)

        return cls(
            function_start=(*outer(HookKind.FUNCTION_START), *own[HookKind.FUNCTION_START]),
            before_invoke=(*outer(HookKind.BEFORE_INVOKE), *own[HookKind.BEFORE_INVOKE]),
            after_invoke=(*own[HookKind.AFTER_INVOKE], *reversed(outer(HookKind.AFTER_INVOKE))),
            close=(*own[HookKind.CLOSE], *reversed(outer(HookKind.CLOSE))),
        )


async def call(fn: Hook, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def run_runtime_start(layers: list[Any]) -> None:
    for hook in _layer_hooks(layers, HookKind.RUNTIME_START):
        await call(hook)


_APPS = frozenset({Interface.ASGI, Interface.WSGI})


def awaits(handler: Any, interface: str) -> bool:
    """Whether the host awaits this handler (an async function, or any ASGI app: a FastAPI app
    is an object, not a function) rather than calling it on the sync path."""
    return interface == Interface.ASGI or inspect.iscoroutinefunction(handler)


class FunctionHost:
    """One function, loaded and ready: runs its hooks and handler for each invocation."""

    def __init__(
        self,
        info: FunctionInfo,
        module: ModuleType,
        attr: str,
        layers: list[Any],
        run_sync: RunSync,
        block_on: BlockOn | None = None,
        interface: str = Interface.NEST,
    ) -> None:
        """`block_on`, if given, runs whatever a hook or handler returns that is awaitable to
        completion in place; the host's coroutines then never suspend, so a caller without an
        event loop can drive them with `run_eagerly`. `interface` says what the handler is: a
        `nest` or Lambda handler, or a WSGI or ASGI app (`isolation.interfaces`)."""
        try:
            self.interface = Interface(interface)
        except ValueError:
            raise LoadError("Error", f"unknown interface {interface!r}") from None
        handler = getattr(module, attr, None)
        if not callable(handler):
            what = "ASGI app" if self.interface in _APPS else "handler"
            raise LoadError(
                "HandlerNotFound", f"module {module.__name__!r} has no callable {what} {attr!r}"
            )
        self.info = info
        self._handler: Hook = handler
        self._is_async = awaits(handler, self.interface)
        asgi = self.interface is Interface.ASGI
        self._lifespan = Lifespan(handler) if asgi else None
        self._hooks = Hooks.collect(module, layers)
        self._run_sync = run_sync
        self._block_on = block_on
        self.logger = logging.LoggerAdapter(function_log, {"sandbox": info.sandbox_id})

    @property
    def has_start_hooks(self) -> bool:
        """Whether `start` has work to do (hooks, or an ASGI app's lifespan startup, which must
        run on the loop that then serves the app)."""
        return bool(self._hooks.function_start) or self._lifespan is not None

    @property
    def handler_is_async(self) -> bool:
        return self._is_async

    async def _call(self, fn: Hook, *args: Any) -> Any:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = self._block_on(result) if self._block_on else await result
        return result

    async def start(self) -> None:
        for hook in self._hooks.function_start:
            try:
                await self._call(hook, self.info)
            except Exception as exc:
                raise LoadError(
                    "Error", f"function start hook {hook.__qualname__} raised {exc!r}"
                ) from exc
        if self._lifespan is not None:
            try:
                await self._lifespan.startup()
            except Exception as exc:
                self._lifespan.abort()
                raise LoadError("Error", f"ASGI lifespan startup: {exc}") from exc

    def _event(self, request: Request, request_id: str) -> Any:
        """What the handler is called with (and the hooks see as `event`)."""
        interface = self.interface
        if interface is Interface.APIGATEWAY_V1:
            return apigateway_v1_event(request, request_id)
        if interface is Interface.APIGATEWAY_V2:
            return apigateway_v2_event(request, request_id)
        if interface is Interface.WSGI:
            return wsgi_environ(request)
        state = self._lifespan.state if self._lifespan is not None else None
        return asgi_scope(request, state)

    async def invoke(self, request: Request, request_id: str, deadline: float) -> Response:
        """Never raises for faults of the function's code: those become a 500 response (an
        answer the interface cannot turn into HTTP: a 502)."""
        ctx = Context(
            request=request,
            request_id=request_id,
            deadline=deadline,
            function=self.info,
            logger=self.logger,
        )
        try:
            if self.interface is Interface.NEST:
                event = decode_event(request.body)
            else:
                event = self._event(request, request_id)
        except InvalidEvent as exc:
            return bad_request(str(exc))
        try:
            response = await self._before_and_handler(event, ctx)
        except ThreadsExhausted:
            raise  # the call did not run: the runtime's 503, not the function's 500
        except MalformedResponse as exc:
            self.logger.warning("invocation %s: %s", request_id, exc)
            response = malformed(self.interface, exc)
        except (Exception, SystemExit) as exc:  # sys.exit() in a handler must not end the host
            self.logger.exception("invocation %s failed", request_id)
            response = error_response(exc)
        for hook in self._hooks.after_invoke:
            try:
                replaced = await self._call(hook, event, ctx, response)
                if isinstance(replaced, Response):
                    response = to_response(replaced)
            except Exception as exc:
                self.logger.exception("after-invoke hook failed in %s", request_id)
                response = error_response(exc)
        return response

    async def _before_and_handler(self, event: Any, ctx: Context) -> Response:
        for hook in self._hooks.before_invoke:
            early = await self._call(hook, event, ctx)
            if isinstance(early, Response):
                return to_response(early)
        interface = self.interface
        if interface is Interface.ASGI:
            return await call_asgi(self._handler, event, ctx.request.body)
        if interface is Interface.WSGI:
            app = self._handler
            response: Response = await self._run_sync(lambda: call_wsgi(app, event))
            return response
        if self._is_async:
            result = await self._call(self._handler, event, ctx)
        else:
            handler = self._handler
            result = await self._run_sync(lambda: handler(event, ctx))
            if inspect.isawaitable(result):
                result = self._block_on(result) if self._block_on else await result
        if interface is Interface.NEST:
            return to_response(result)
        if interface is Interface.APIGATEWAY_V1:
            return apigateway_v1_response(result)
        return apigateway_v2_response(result)

    def chunks(self, body: Streamed) -> Chunks:
        """A streamed answer's chunks on an event loop (sync steps on the sync path)."""
        return aiter_chunks(body, self._run_sync)

    def chunks_blocking(self, body: Streamed) -> Generator[bytes, None, None]:
        """A streamed answer's chunks without a running loop (a host built with block_on)."""
        assert self._block_on is not None, "a blocking host is built with block_on"
        return iter_chunks(body, self._block_on)

    async def close(self) -> None:
        if self._lifespan is not None:
            try:
                await self._lifespan.shutdown()
            except Exception:
                self.logger.exception("ASGI lifespan shutdown failed")
        for hook in self._hooks.close:
            try:
                await self._call(hook, self.info)
            except Exception:
                self.logger.exception("close hook %s failed", hook.__qualname__)


class Suspended(Generic[T]):
    """A coroutine `start_eagerly` started that did not finish: await `rest` to finish it."""

    __slots__ = ("rest",)

    def __init__(self, rest: Awaitable[T]) -> None:
        self.rest = rest


def start_eagerly(coro: Coroutine[Any, Any, T]) -> T | Suspended[T]:
    """Run a coroutine in the caller's task until it first suspends.

    Why: most invocations of an async handler never suspend, and for those, bounding them with
    a timer (asyncio.timeout: about 5 µs) costs more than the rest of the runtime's work. The
    caller arms its timer only when it gets a `Suspended` back.
    """
    try:
        pending = coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    return Suspended(_resume(coro, pending))


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], pending: Any) -> Generator[Any, Any, T]:
    # What `await coro` would have done from its first suspension on: pass what the coroutine
    # yields up to the task, and what the task sends or throws (cancellation) down to it.
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                result: T = done.value
                return result
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                result = done.value
                return result


def run_eagerly(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a host built with `block_on`) without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a host coroutine suspended although awaitables are blocked on")
