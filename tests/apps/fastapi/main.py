"""A FastAPI app as written for uvicorn: path and query parameters, validation, a JSON body, a
StreamingResponse, and what it sees of the request's URL and client. Test data of
tests/integration/test_interfaces.py, deployed with `--interface asgi --handler main:app`."""

import socket

from fastapi import FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI()


def wait_at_gate(gate: str) -> None:
    """Block until whoever listens at `gate` (host:port) sends a byte: the test lets the stream
    go on only after it has read the first event, so that event cannot have been buffered."""
    host, _, port = gate.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=60) as opened:
        opened.recv(1)


@app.get("/events")
def events(gate: str):
    def stream():
        yield "data: one\n\n"
        wait_at_gate(gate)
        yield "data: two\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


class Item(BaseModel):
    name: str
    price: float


@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None, tag: list[str] = Query(default=[])):  # noqa: B008
    return {"item_id": item_id, "q": q, "tag": tag}


@app.post("/items", status_code=201)
def create_item(item: Item):
    return {"name": item.name, "price": item.price, "with_tax": round(item.price * 1.2, 2)}


@app.get("/whoami")
def whoami(request: Request):
    return {
        "url": str(request.url),
        "root_path": request.scope["root_path"],
        "client": request.client.host,
        "host": request.headers["host"],
        "forwarded_for": request.headers.get("x-forwarded-for"),
        "multi": request.headers.getlist("x-multi"),
    }
