"""A Flask app as written for gunicorn: URL rules, query lists, non-200 statuses and headers.
Test data of tests/integration/test_interfaces.py, deployed with `--interface wsgi`."""

from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return jsonify(
        hello=name,
        tags=request.args.getlist("tag"),
        url=request.url,
        script_root=request.script_root,
        remote=request.remote_addr,
        host=request.host,
    )


@app.post("/teapot")
def teapot():
    return jsonify(brewed=request.get_json()), 418, {"X-Brewer": "flask"}


@app.get("/gone")
def gone():
    abort(410)
