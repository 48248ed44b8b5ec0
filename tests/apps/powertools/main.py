"""An aws-lambda-powertools REST API resolver, as deployed to Lambda behind API Gateway's REST
API (proxy integration, payload 1.0). Test data of tests/integration/test_interfaces.py
(`--interface apigateway-v1`)."""

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

app = APIGatewayRestResolver()


@app.get("/hello/<name>")
def hello(name):
    event = app.current_event
    return {
        "hello": name,
        "q": event.get_query_string_value("q"),
        "tags": (event.multi_value_query_string_parameters or {}).get("tag"),
        "method": event.http_method,
    }


@app.post("/")
def root():
    return Response(
        202,
        "application/json",
        app.current_event.body,
        headers={"X-Seen": app.current_event.http_method},
    )


def handler(event, context):
    return app.resolve(event, context)
