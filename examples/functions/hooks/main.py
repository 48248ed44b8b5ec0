"""Records the lifecycle hook order in the file `$NEST_TRACE_DIR/<sandbox id>`."""

import os

from sandbox import after_invoke, before_invoke, on_close, on_function_start


def trace(sandbox_id, line):
    with open(os.path.join(os.environ["NEST_TRACE_DIR"], sandbox_id), "a") as f:
        f.write(line + "\n")


@on_function_start
def started(info):
    trace(info.sandbox_id, "function:function_start")


@before_invoke
def before(event, context):
    trace(context.sandbox_id, "function:before_invoke")


@after_invoke
async def after(event, context, response):
    trace(context.sandbox_id, "function:after_invoke")


@on_close
def closing(info):
    trace(info.sandbox_id, "function:close")


def handler(event, context):
    trace(context.sandbox_id, "function:handler")
    return "ok"
