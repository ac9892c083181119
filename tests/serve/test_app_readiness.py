"""The app before its models are ready, its key check and CORS, without loading a model (fast tier)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from rag.errors import RagError
from rag.serve import create_app
from rag.serve.engine import ServedModels
from rag.settings import Settings


class MissingModels(ServedModels):
    """Models that cannot be loaded, as on a machine where nothing was ingested."""

    def load(self) -> None:
        self.error = "nothing is indexed yet: run `rag ingest PATH ...` first"
        raise RagError(self.error)


def client_for(**settings) -> TestClient:
    config = Settings(**settings)
    return TestClient(create_app(config, MissingModels(config)))


def test_not_ready_is_a_503_naming_the_fix():
    with client_for() as client:
        for _ in range(100):  # the models load in the background at startup
            health = client.get("/health")
            if health.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert health.status_code == 503 and "rag ingest" in health.json()["error"]
        response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready" and "rag ingest" in response.json()["error"]["message"]


def test_the_key_is_checked_before_anything_else():
    with client_for(api_key="k1") as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 503  # past the key: not ready
        assert client.get("/").status_code == 200 and "chat.js" in client.get("/").text  # the page itself is open


@pytest.mark.parametrize(("origins", "allowed"), [([], None), (["http://localhost:3000"], "http://localhost:3000")])
def test_no_cors_unless_configured(origins, allowed):
    with client_for(cors_origins=origins) as client:
        preflight = client.options(
            "/v1/chat/completions", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers.get("access-control-allow-origin") == allowed


def test_the_page_and_its_assets_are_served_by_the_app():
    with client_for() as client:
        page = client.get("/").text
        assert "<script src=\"/static/chat.js\">" in page and "http" not in page.replace("http-equiv", "")  # no CDN
        assert client.get("/static/chat.js").status_code == 200 and client.get("/static/chat.css").status_code == 200
