"""rag.eval.runner: run_eval over fake models (retrieval once, failed answers and runs), and `rag eval` from the CLI.

Fast tier: scripted LLMs and fake embeddings over a real Chroma store. Integration tier: the
real default models through the CLI, on a few questions of ``data/questions.yaml``.
"""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import yaml
from click.testing import CliRunner

from rag.cli import EXIT_NOTHING_DONE, EXIT_OK, EXIT_PARTIAL, cli
from rag.eval import run_eval
from rag.store import EmptyStore
from tests.eval.conftest import DATA, GOOD, QUESTIONS, SAMPLE_QUESTIONS, WEAK, CountingEmbeddings, count_words, fake_factory, write_questions


def test_run_eval_ingests_the_corpus_retrieves_once_and_scores_each_run(settings, question_file):
    embeddings = CountingEmbeddings(size=384)
    factory = fake_factory({"default": GOOD, "weak": WEAK})

    report = run_eval(question_file, settings, models=["default", "weak"], prompts=["chatml", "rlm/rag-prompt"], embeddings=embeddings, llm_factory=factory)

    assert report.ingested and report.ingested["chunks_added"] > 0 and not report.warnings
    assert embeddings.queries == 3, "retrieval runs once per question, whatever the number of runs"
    assert [(run.model, run.prompt_name) for run in report.runs] == [
        ("default.gguf", "chatml/rag"), ("default.gguf", "generic/rag"), ("weak.gguf", "chatml/rag"), ("weak.gguf", "generic/rag"),
    ]  # fmt: skip
    good, weak = report.runs[0].metrics, report.runs[2].metrics
    assert (good.fact_recall, good.groundedness, good.dont_know_rate, good.false_dont_know_rate, good.failures) == (1.0, 1.0, 1.0, 0.0, 0)
    assert (weak.fact_recall, weak.groundedness, weak.dont_know_rate, weak.failures) == (0.0, 0.0, 0.0, 1)
    assert good.hit_at_k == weak.hit_at_k and good.mrr == weak.mrr, "retrieval is shared"
    failed = next(answer for answer in report.runs[2].answers if answer.id == "license")
    assert "server fell over" in failed.error
    assert good.ttft_s is not None and good.ttft_s >= 0 and (good.tokens_per_s is None or good.tokens_per_s > 0)
    assert report.status == "partial"


class TokenizerFailsOn(http.server.BaseHTTPRequestHandler):
    """A llama.cpp server whose /tokenize answers HTTP 500 for text mentioning ``poison``."""

    poison = "population of Arran Bay"  # in one question, in no document: whichever chunks are retrieved

    def do_GET(self):  # noqa: N802
        self._json({"model_path": "/models/fake-chatml.gguf", "chat_template": "<|im_start|>", "default_generation_settings": {"n_ctx": 4096}})

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path == "/tokenize":
            if self.poison in request["content"]:
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b'{"error": "tokenizer crashed"}')
                return
            self._json({"tokens": list(range(count_words(request["content"])))})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'data: {"content": "It was first lit in 1887 [1].", "stop": false}\n\n')
        self.wfile.write(b'data: {"content": "", "stop": true}\n\n')

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_server_error_while_counting_tokens_is_one_failed_answer(settings, question_file, fake_embeddings):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenizerFailsOn)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        report = run_eval(question_file, settings.with_overrides(backend="llamafile", llamafile_url=url), embeddings=fake_embeddings)
    finally:
        server.shutdown()
        server.server_close()
    [run] = report.runs
    assert run.error is None and run.metrics.failures == 1 and report.status == "partial"
    failed = {answer.id: answer.error for answer in run.answers if answer.error}
    assert list(failed) == ["population"] and failed["population"].startswith(f"llama.cpp server at {url} answered HTTP 500 to /tokenize")
    assert [answer.answer for answer in run.answers if not answer.error] == ["It was first lit in 1887 [1]."] * 2


def test_a_model_that_cannot_load_is_a_failed_run_and_the_others_go_on(settings, question_file, fake_embeddings):
    report = run_eval(question_file, settings, models=["missing.gguf", "default"], embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD}))
    missing, default = report.runs
    assert "model file not found" in missing.error and missing.metrics.failures == 3 and not missing.answers
    assert default.error is None and default.metrics.failures == 0
    assert report.status == "partial"
    assert run_eval(question_file, settings, models=["missing.gguf"], embeddings=fake_embeddings, llm_factory=fake_factory({})).status == "failed"


def test_an_unknown_prompt_is_a_failed_run(settings, question_file, fake_embeddings):
    report = run_eval(question_file, settings, prompts=["nope"], embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD}))
    assert "unknown prompt family 'nope'" in report.runs[0].error


def test_empty_store_without_a_corpus_says_to_ingest(settings, tmp_path, fake_embeddings):
    path = write_questions(tmp_path, {"questions": QUESTIONS["questions"]})
    with pytest.raises(EmptyStore, match="rag ingest"):
        run_eval(path, settings, embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD}))


def test_expected_sources_that_are_not_indexed_are_warned_about(settings, tmp_path, fake_embeddings):
    path = write_questions(tmp_path, {"questions": [{"question": "Where?", "sources": ["missing.md"]}]})
    report = run_eval(path, settings, ingest=[DATA / "quokkadb.rst"], embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD}))
    assert report.ingested["sources"] == 1
    assert any("'missing.md' is not indexed" in warning for warning in report.warnings)
    assert report.runs[0].metrics.hit_at_k == 0.0


# --- the CLI ----------------------------------------------------------------------------------------------------


@pytest.fixture
def eval_cli(settings, fake_embeddings, monkeypatch):
    """Run `rag eval` with fake embeddings and scripted models instead of the real ones."""
    import rag.embed
    import rag.eval.runner

    monkeypatch.setattr(rag.embed, "load_embeddings", lambda settings: fake_embeddings)
    monkeypatch.setattr(rag.eval.runner, "load_local_llm", fake_factory({"default": GOOD, "weak": WEAK}))
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("RAG_ISOLATE_LOADERS", "0")

    def run(*args: str):
        return CliRunner().invoke(cli, ["eval", *args])

    return run


def test_cli_eval_prints_the_table_and_writes_the_reports(eval_cli, question_file, tmp_path):
    result = eval_cli(str(question_file), "--prompts", "chatml,rlm/rag-prompt", "-k", "2", "--out", str(tmp_path / "out"))
    assert result.exit_code == EXIT_OK, result.output
    assert "hit@2" in result.output and "default · chatml/rag" in result.output and "rlm/rag-prompt (generic/rag)" in result.output
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["eval.json", "eval.md", "eval.png"]


def test_cli_eval_json_and_partial_exit_status(eval_cli, question_file, tmp_path):
    result = eval_cli(str(question_file), "--models", "default,weak", "--json", "--out", str(tmp_path / "out"))
    assert result.exit_code == EXIT_PARTIAL, result.output
    data = json.loads(result.output)
    assert data["status"] == "partial" and data["k"] == 4 and len(data["runs"]) == 2
    assert data["files"]["chart"] == str(tmp_path / "out" / "eval.png")


def test_cli_eval_default_out_dir_and_nothing_done(eval_cli, question_file, settings):
    result = eval_cli(str(question_file), "--models", "missing.gguf")
    assert result.exit_code == EXIT_NOTHING_DONE, result.output
    assert "could not run missing · default: model file not found" in result.output
    assert len(list((settings.data_dir / "evals").glob("*/eval.md"))) == 1


def test_cli_eval_bad_question_file_is_one_line_error(eval_cli, tmp_path):
    path = write_questions(tmp_path, {"questions": [{"question": "Q?"}]})
    result = eval_cli(str(path))
    assert result.exit_code == 1 and "nothing to score" in result.output and "Traceback" not in result.output


# --- real models (integration) --------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_eval_through_the_cli(tmp_path, monkeypatch):
    """The home acceptance test: the default models answer a few sample questions with two prompts."""
    sample = yaml.safe_load(SAMPLE_QUESTIONS.read_text(encoding="utf-8"))
    picked = [q for q in sample["questions"] if q["id"] in {"lighthouse-first-lit", "quokkadb-license", "arran-bay-population"}]
    path = write_questions(tmp_path, {"corpus": [str(DATA)], "questions": picked})
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "rag-data"))
    monkeypatch.setenv("RAG_TEMPERATURE", "0")
    monkeypatch.setenv("RAG_N_THREADS", "1")  # robust on a busy machine

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["eval", str(path), "--prompts", "default,rlm/rag-prompt", "-k", "2", "--max-tokens", "32", "--json", "--out", str(out)])

    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.output)
    assert data["ingested"]["sources"] == 4 and not data["warnings"]
    assert [run["prompt_name"] for run in data["runs"]] == ["chatml/rag", "generic/rag"]
    for run in data["runs"]:
        metrics = run["metrics"]
        assert metrics["hit_at_k"] == 1.0 and metrics["mrr"] > 0.5 and metrics["failures"] == 0
        assert metrics["ttft_s"] > 0 and metrics["tokens_per_s"] > 0
        for answer in run["answers"]:
            assert answer["answer"] and answer["tokens"] > 0 and "<|im_" not in answer["answer"]
    assert (out / "eval.png").stat().st_size > 10_000 and "## Answers" in (out / "eval.md").read_text(encoding="utf-8")
