"""Fixtures of the batch tests: fake servers, a small corpus, batch settings, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import cli
from rag.settings import Settings
from tests.batch.fakes import TOPICS, FakeLlamaServer


@pytest.fixture
def fake_server():
    servers: list[FakeLlamaServer] = []

    def start(**options) -> FakeLlamaServer:
        servers.append(FakeLlamaServer(**options))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in TOPICS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def batch_settings(settings: Settings) -> Settings:
    return settings.with_overrides(isolate_loaders=False, chunk_size=200)


@pytest.fixture
def run_cli(settings, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAG_ISOLATE_LOADERS", "false")

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke
