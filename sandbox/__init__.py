"""The function contract users write against, and (in submodules) the runtime daemon.

Handlers import from here: `from sandbox import Response, before_invoke`. The objects are
defined in `isolation.contract` because the isolation backends, which may not import `sandbox`,
build contexts and encode responses (see that module's docstring); this package re-exports them
so user code has one stable import path. Keep this module free of heavy imports: every sandbox
imports it.
"""

from isolation.contract import (
    Context,
    FunctionInfo,
    Request,
    Response,
    after_invoke,
    before_invoke,
    on_close,
    on_function_start,
)

__all__ = [
    "Context",
    "FunctionInfo",
    "Request",
    "Response",
    "after_invoke",
    "before_invoke",
    "on_close",
    "on_function_start",
]
