"""The gateway limit: a Flask app that reads the request body and answers an empty JSON object."""

from __future__ import annotations

from flask import Flask, Response, request


def create_app() -> Flask:
    """Return the app: ``GET /health`` and ``POST`` anywhere answer at once."""
    app = Flask(__name__)

    @app.get("/health")
    def health() -> Response:
        return Response("{}", mimetype="application/json")

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def anything(path: str) -> Response:
        request.get_data()
        return Response("{}", mimetype="application/json")

    return app
