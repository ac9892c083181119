"""The CLI: foundation commands, exit statuses, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rag.cli import EXIT_ERROR, cli


@pytest.fixture
def run(settings, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_help_lists_the_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("ingest", "search", "ask", "models", "doctor"):
        assert command in result.output


def test_models_json_is_machine_readable(run):
    result = run("models", "--json")
    assert result.exit_code == 0
    models = json.loads(result.stdout)
    llm = next(model for model in models if model["role"] == "llm")
    assert {"name", "role", "path", "size_bytes", "origin", "chat_format"} <= llm.keys()
    assert llm["chat_format"] == "chatml"


def test_missing_model_is_one_line_error_not_traceback(run, tmp_path):
    result = CliRunner().invoke(cli, ["ask", "hi", "--model", str(tmp_path / "missing.gguf")])
    assert result.exit_code == EXIT_ERROR
    assert "missing.gguf" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"RAG_N_CTX": "lots"}, ["sources"], "invalid setting: n_ctx='lots'"),
        ({"RAG_CONFIG": "/nonexistent/rag.toml"}, ["sources"], "cannot read the RAG_CONFIG file"),
        ({}, ["search", "-k", "0", "lighthouse"], "invalid setting: k=0"),
    ],
)
def test_bad_settings_are_one_line_errors_not_tracebacks(run, monkeypatch, env, args, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run(*args)
    assert result.exit_code == EXIT_ERROR
    assert expected in result.output


def test_truncated_model_fails_cleanly_in_a_real_process(settings, tmp_path):
    bogus = tmp_path / "bad.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    env = {"RAG_DATA_DIR": str(settings.data_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "rag", "ask", "hi", "--model", str(bogus)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == EXIT_ERROR
    assert "bad.gguf" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.integration
def test_doctor_passes_with_the_default_models(run):
    result = run("doctor", "--json")
    checks = json.loads(result.stdout)
    assert result.exit_code == 0, checks
    names = {check["name"] for check in checks}
    assert {"llm model", "embedding model", "llama.cpp build", "gpt4all"} <= names
    embed = next(check for check in checks if check["name"] == "embedding model")
    assert "dimension 384" in embed["detail"]
    build = next(check for check in checks if check["name"] == "llama.cpp build")
    assert "GPU offload" in build["detail"]


def test_doctor_fails_with_the_fix_when_a_model_is_missing(run, tmp_path):
    result = run("doctor", "--model", str(tmp_path / "gone.gguf"))
    assert result.exit_code == EXIT_ERROR
    assert "FAIL llm model" in result.output and "gone.gguf" in result.output and "fix:" in result.output


def test_doctor_reports_an_unreachable_server(run):
    result = run("doctor", "--backend", "llamafile", "--server", "http://127.0.0.1:9", "--json")
    assert result.exit_code == EXIT_ERROR
    server = next(check for check in json.loads(result.stdout) if check["name"] == "llama.cpp server")
    assert not server["ok"] and "127.0.0.1:9" in server["detail"]


@pytest.mark.integration
def test_demo_slice_answers_with_sources(run):
    from tests.conftest import SAMPLE_DATA

    assert run("ingest", str(SAMPLE_DATA)).exit_code == 0
    result = run("ask", "When was Kestrel Point Lighthouse first lit?", "--json")
    assert result.exit_code == 0
    answer = json.loads(result.stdout)
    assert answer["answer"].strip()
    assert answer["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert any(source["source"].endswith("kestrel-point-lighthouse.md") for source in answer["sources"])
