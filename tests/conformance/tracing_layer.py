"""Runtime-level hook layers that record the order they run in (used by the hook-order test).

Each hook appends `<layer>:<hook>` to `$NEST_TRACE_DIR/<sandbox id>`, the same file the
`examples/functions/hooks` function writes to, so one file shows the interleaving.
"""

from __future__ import annotations

import os
from typing import Any


def trace(sandbox_id: str, line: str) -> None:
    with open(os.path.join(os.environ["NEST_TRACE_DIR"], sandbox_id), "a") as f:
        f.write(line + "\n")


class _Tracing:
    name = ""

    def function_start(self, info: Any) -> None:
        trace(info.sandbox_id, f"{self.name}:function_start")

    def before_invoke(self, event: Any, context: Any) -> None:
        trace(context.sandbox_id, f"{self.name}:before_invoke")

    async def after_invoke(self, event: Any, context: Any, response: Any) -> None:
        trace(context.sandbox_id, f"{self.name}:after_invoke")

    def close(self, info: Any) -> None:
        trace(info.sandbox_id, f"{self.name}:close")


class Outer(_Tracing):
    name = "outer"


class Inner(_Tracing):
    name = "inner"
