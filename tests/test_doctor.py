"""rag doctor: each check reports what it found, or the problem and its fix; the backend adds its own checks."""

from __future__ import annotations

import json

import llama_cpp
import pytest
from click.testing import CliRunner

from rag.cli import EXIT_ERROR, cli
from rag.doctor import check_llama_cpp_build, check_store, reindex_fix, run_checks
from tests.fake_llama_server import fake_server  # noqa: F401 (a fixture)

DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def run(settings, monkeypatch):
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def no_models(settings, tmp_path):
    """Settings whose LLM and embedder files are missing: their checks fail before anything loads."""
    return settings.with_overrides(llm_model=str(tmp_path / "gone.gguf"), embed_model=str(tmp_path / "gone-embed.gguf"))


def by_name(checks) -> dict:
    return {check.name: check for check in checks}


def test_missing_models_fail_with_the_fix_and_the_libraries_pass(no_models):
    checks = by_name(run_checks(no_models))
    assert list(checks) == ["llm model", "embedding model", "llama.cpp build", "gpt4all", "store"]
    llm, embedder = checks["llm model"], checks["embedding model"]
    assert not llm.ok and "gone.gguf" in llm.detail and llm.detail.startswith("ModelNotFound") and "make models" in llm.fix
    assert not embedder.ok and "gone-embed.gguf" in embedder.detail and embedder.fix
    assert checks["llama.cpp build"].ok and checks["gpt4all"].ok


def test_the_server_backend_adds_a_server_check_that_names_what_it_serves(no_models, fake_server):
    url = fake_server("ok")
    server = by_name(run_checks(no_models.with_overrides(backend="llamafile", llamafile_url=url)))["llama.cpp server"]
    assert server.ok and server.detail == f"{url} serves /models/fake-chatml.gguf"


def test_an_unreachable_server_fails_with_how_to_start_one(no_models):
    server = by_name(run_checks(no_models.with_overrides(backend="llamafile", llamafile_url=DEAD_SERVER)))["llama.cpp server"]
    assert not server.ok and "127.0.0.1:9" in server.detail and server.fix == "start a server: llama-server -m MODEL.gguf --port 9"


@pytest.mark.skipif(bool(llama_cpp.llama_supports_gpu_offload()), reason="this llama.cpp build offloads to a GPU")
def test_gpu_layers_on_a_cpu_only_build_fail_with_the_reinstall_command(settings):
    assert check_llama_cpp_build(settings).ok
    check = check_llama_cpp_build(settings.with_overrides(n_gpu_layers=-1))
    assert not check.ok and "will be ignored" in check.detail and "GGML_CUDA=on" in check.fix


def test_cli_exit_status_and_json_list_every_check(run, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_EMBED_MODEL", str(tmp_path / "gone-embed.gguf"))
    result = run("doctor", "--model", str(tmp_path / "gone.gguf"), "--server", DEAD_SERVER, "--json")
    assert result.exit_code == EXIT_ERROR
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert {"llm model", "embedding model", "llama.cpp build", "gpt4all", "llama.cpp server", "store"} == set(checks)
    assert {"name", "ok", "detail", "fix", "required"} == set(checks["llm model"])


def test_cli_text_marks_failures_with_their_fix(run, tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_EMBED_MODEL", str(tmp_path / "gone-embed.gguf"))
    result = run("doctor", "--model", str(tmp_path / "gone.gguf"))
    assert result.exit_code == EXIT_ERROR
    assert "FAIL llm model" in result.output and "gone.gguf" in result.output and "fix:" in result.output
    assert "ok   llama.cpp build" in result.output


def test_no_store_yet_passes_and_says_how_to_make_one(settings):
    [store] = check_store(settings)
    assert store.ok and not store.required and "no store yet" in store.detail and "rag ingest PATH" in store.detail


def test_a_damaged_store_file_fails_with_the_reindex_command(settings):
    settings.store_path.mkdir(parents=True)
    (settings.store_path / "chroma.sqlite3").write_bytes(b"garbage" * 1000)
    [store] = check_store(settings)
    assert not store.ok and store.detail.startswith(str(settings.store_path / "chroma.sqlite3") + ": the Chroma database")
    assert store.fix == f"rebuild from your sources: rag ingest SOURCES --store {settings.store_path} --reindex (for each collection: --collection NAME)"


def test_a_store_being_written_is_not_checked_and_says_why(settings):
    from rag.store import store_lock

    settings.store_path.mkdir(parents=True)
    (settings.store_path / "chroma.sqlite3").write_bytes(b"garbage" * 1000)
    with store_lock(settings, "rag ingest"):
        [store] = check_store(settings)
    assert not store.ok and not store.required and store.detail.startswith("not checked: store") and "rag ingest" in store.detail


def test_the_fix_names_a_collection_other_than_the_default():
    assert reindex_fix("/s", "default") == "rebuild from your sources: rag ingest SOURCES --store /s --reindex"
    assert reindex_fix("/s", "notes") == "rebuild from your sources: rag ingest SOURCES --store /s --collection notes --reindex"


def test_a_store_on_a_chroma_server_is_not_checked_here(settings):
    assert check_store(settings.with_overrides(chroma_url="http://127.0.0.1:9")) == []


# --- with the real models (integration) -------------------------------------------------------------


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


@pytest.mark.integration  # doctor loads the real embedder
def test_doctor_fails_with_the_fix_when_a_model_is_missing(run, tmp_path):
    result = run("doctor", "--model", str(tmp_path / "gone.gguf"))
    assert result.exit_code == EXIT_ERROR
    assert "FAIL llm model" in result.output and "gone.gguf" in result.output and "fix:" in result.output


@pytest.mark.parametrize("backend", [["--backend", "llamafile"], []], ids=["with-backend", "server-alone"])
@pytest.mark.integration  # doctor loads the real embedder
def test_doctor_reports_an_unreachable_server(run, backend):
    result = run("doctor", *backend, "--server", DEAD_SERVER, "--json")
    assert result.exit_code == EXIT_ERROR
    server = next(check for check in json.loads(result.stdout) if check["name"] == "llama.cpp server")
    assert not server["ok"] and "127.0.0.1:9" in server["detail"]
