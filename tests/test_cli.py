"""The CLI: foundation commands, exit statuses, errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rag.cli import EXIT_ERROR, EXIT_USAGE, cli

DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def run(settings, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def test_help_lists_the_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("ingest", "search", "ask", "models", "doctor"):
        assert command in result.output


@pytest.mark.integration  # reads the real model files
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


@pytest.mark.integration  # the CLI as a real process
def test_truncated_model_fails_cleanly_in_a_real_process(settings, tmp_path):
    bogus = tmp_path / "bad.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    env = {"RAG_DATA_DIR": str(settings.data_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "rag", "ask", "hi", "--model", str(bogus)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == EXIT_ERROR
    assert "bad.gguf" in proc.stderr and "Traceback" not in proc.stderr


def one_line_error(stderr: str) -> str:
    """The single ``error: ...`` line a failing command prints on stderr (asserts there is nothing else)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


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


# --- bad input: one line on stderr, never a traceback ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ask", ""],
        ["ask", "   \t "],
        ["search", ""],
        ["search", "  "],
    ],
    ids=["ask-empty", "ask-blank", "search-empty", "search-blank"],
)
def test_an_empty_question_is_a_usage_error_before_anything_loads(run, tmp_path, args):
    # A missing model and an unusable store would fail first if anything were loaded or opened.
    result = run(*args, "--store", "/proc/x", *(["--model", str(tmp_path / "missing.gguf")] if args[0] == "ask" else []))
    assert result.exit_code == EXIT_USAGE
    assert "is empty" in one_line_error(result.stderr)


@pytest.mark.parametrize("command", ["ask", "chat", "summarize"])
def test_server_implies_the_llamafile_backend(run, tmp_path, command):
    note = tmp_path / "note.txt"
    note.write_text("The lighthouse was first lit in 1871.\n")
    args = {"ask": ["ask", "When was it lit?"], "chat": ["chat"], "summarize": ["summarize", str(note)]}[command]
    result = run(*args, "--server", DEAD_SERVER, input="exit\n")
    assert result.exit_code == EXIT_ERROR  # not an answer from the in-process model
    assert "cannot reach a llama.cpp server at " + DEAD_SERVER in one_line_error(result.stderr)


@pytest.mark.parametrize("command", ["ask", "chat", "summarize", "doctor", "eval", "batch-summarize"])
def test_server_with_another_backend_is_a_usage_error(run, tmp_path, command):
    questions = tmp_path / "questions.yaml"
    questions.write_text("questions: []\n")
    args = {
        "ask": ["ask", "q"],
        "chat": ["chat"],
        "summarize": ["summarize", str(questions)],
        "doctor": ["doctor"],
        "eval": ["eval", str(questions)],
        "batch-summarize": ["batch-summarize", str(questions), "--out", str(tmp_path / "out")],
    }[command]
    result = run(*args, "--backend", "llamacpp", "--server", DEAD_SERVER)
    assert result.exit_code == EXIT_USAGE
    assert "--server needs the llamafile backend, not --backend llamacpp" in one_line_error(result.stderr)


unusable_folders = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and /sys")


@unusable_folders
@pytest.mark.parametrize("store", ["/proc/x", "/sys/kernel/x", "/proc"])
@pytest.mark.parametrize("command", ["search", "ingest"])
def test_an_unusable_store_folder_is_one_line_naming_it(run, store, command):
    from tests.conftest import SAMPLE_DATA

    args = ["search", "lighthouse"] if command == "search" else ["ingest", str(SAMPLE_DATA / "quokkadb.rst")]
    result = run(*args, "--store", store)
    assert result.exit_code == EXIT_ERROR
    line = one_line_error(result.stderr)
    assert f"store folder {store}:" in line and "--store" in line


@unusable_folders
@pytest.mark.integration
def test_ask_with_an_unusable_store_folder_is_one_line_naming_it(run):
    result = run("ask", "When was the lighthouse first lit?", "--store", "/proc/x")
    assert result.exit_code == EXIT_ERROR
    assert "store folder /proc/x:" in one_line_error(result.stderr)


@unusable_folders
@pytest.mark.parametrize("command", ["batch-summarize", "eval"])
def test_an_unusable_out_folder_is_one_line_naming_it(run, tmp_path, command):
    from tests.conftest import SAMPLE_DATA

    source = SAMPLE_DATA / ("quokkadb.rst" if command == "batch-summarize" else "questions.yaml")
    result = run(command, str(source), "--out", "/proc/y", "--store", str(tmp_path / "store"))
    assert result.exit_code == EXIT_ERROR
    line = one_line_error(result.stderr)
    assert "output folder /proc/y:" in line and "--out" in line


@unusable_folders
@pytest.mark.integration  # the CLI as a real process
def test_an_unusable_store_is_one_line_in_a_real_process(settings, tmp_path):
    env = {"RAG_DATA_DIR": str(settings.data_dir), "PATH": "/usr/bin:/bin"}
    note = tmp_path / "note.txt"
    note.write_text("The lighthouse was first lit in 1871.\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rag", "ingest", str(note), "--store", "/proc/x"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == EXIT_ERROR
    assert "store folder /proc/x" in one_line_error(proc.stderr)


def test_an_unknown_config_key_is_one_line_naming_it(run, monkeypatch, tmp_path):
    config = tmp_path / "rag.toml"
    config.write_text("k = 2\nchunk_sise = 300\n")
    monkeypatch.setenv("RAG_CONFIG", str(config))
    result = run("sources")
    assert result.exit_code == EXIT_ERROR
    assert "unknown setting(s) in the RAG_CONFIG file" in one_line_error(result.stderr) and "chunk_sise" in result.stderr


def test_help_shows_defaults_and_backends_from_the_settings(run):
    from typing import get_args

    from rag.settings import Backend, Settings

    ask = run("ask", "--help").output
    defaults = Settings.model_fields
    assert f"Number of chunks retrieved [default: {defaults['k'].default}]." in " ".join(ask.split())
    assert f"LLM backend [default: {defaults['backend'].default}]." in " ".join(ask.split())
    assert "[" + "|".join(get_args(Backend)) + "]" in ask
    batch = " ".join(run("batch-summarize", "--help").output.split())
    assert "--server URL llama.cpp / llamafile server to use (repeatable" in batch and "--model TEXT" in batch


def test_summarize_lists_each_failure_before_the_error_when_nothing_loads(run, tmp_path):
    result = run("summarize", str(tmp_path / "gone.md"), "--server", DEAD_SERVER, "--json")
    assert result.exit_code == EXIT_ERROR
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("failed: ") and "gone.md" in lines[0]
    assert lines[1] == "error: nothing to summarize: no input could be loaded"


@pytest.mark.integration  # a real process reading the real model files
def test_read_only_commands_end_without_teardown_and_keep_output_and_status(settings, tmp_path):
    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir)}
    models = subprocess.run([sys.executable, "-m", "rag", "models", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert models.returncode == 0 and json.loads(models.stdout)  # the whole JSON arrives
    empty = subprocess.run([sys.executable, "-m", "rag", "search", "lighthouse"], capture_output=True, text=True, env=env, timeout=120)
    assert empty.returncode == EXIT_ERROR and empty.stderr.count("error:") == 1 and "rag ingest" in empty.stderr


@pytest.mark.integration  # the real embedder and Chroma, in a real process ended without teardown
def test_ingest_ends_without_teardown_and_leaves_every_chunk_findable(settings, tmp_path):
    from rag.store import open_collection, recorded_sources

    env = {**os.environ, "RAG_DATA_DIR": str(settings.data_dir)}
    done = subprocess.run([sys.executable, "-m", "rag", "ingest", "data", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole JSON arrives
    collection = open_collection(settings, create=False)
    assert collection.count() == report["chunks_added"] > 0
    probe = collection.get(limit=1, include=["embeddings"])["embeddings"][0]
    found = collection.query(query_embeddings=[probe], n_results=report["chunks_added"])["ids"][0]
    assert len(found) == report["chunks_added"]  # the vector index holds every chunk, not only Chroma's log
    assert {entry.state for entry in recorded_sources(settings)} == {"indexed"}
