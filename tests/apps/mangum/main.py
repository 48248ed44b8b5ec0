"""A FastAPI app wrapped by Mangum, as deployed to Lambda behind an HTTP API or a Function URL
(payload 2.0). Test data of tests/integration/test_interfaces.py (`--interface apigateway-v2`)."""

from fastapi import FastAPI, Query, Request, Response
from mangum import Mangum

app = FastAPI()


@app.get("/items/{item_id}")
def read_item(
    item_id: int,
    request: Request,
    response: Response,
    tag: list[str] = Query(default=[]),  # noqa: B008
):
    response.set_cookie("seen", str(item_id))
    response.set_cookie("again", "yes")
    return {
        "item_id": item_id,
        "tag": tag,
        "cookie": request.cookies.get("flavour"),
        "path": request.url.path,
        "query": request.url.query,
    }


handler = Mangum(app, lifespan="off")
