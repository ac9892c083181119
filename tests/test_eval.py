"""rag eval: the question file, the scores, the runs and their reports, from Python and the CLI.

Fast tier: fake LLMs and fake embeddings over a real Chroma store. Integration tier: the
real default models through the CLI, on a few questions of ``data/questions.yaml``.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import FakeListLLM
from langchain_core.language_models.llms import LLM

from rag.answer import Source
from rag.cli import EXIT_NOTHING_DONE, EXIT_OK, EXIT_PARTIAL, cli
from rag.eval import (
    Facts,
    QuestionFileError,
    contains_phrase,
    find_facts,
    grounding,
    load_questions,
    run_eval,
    says_dont_know,
    score_retrieval,
    source_matches,
)
from rag.llm import LLMBackendError, LocalLLM
from rag.models import ModelNotFound
from rag.store import EmptyStore

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE_QUESTIONS = DATA / "questions.yaml"


# --- the question file --------------------------------------------------------------------------------


def test_sample_question_file_covers_the_corpus_and_an_unanswerable_question():
    questions = load_questions(SAMPLE_QUESTIONS)
    assert questions.corpus == (str(DATA.resolve()),)
    unanswerable = [question for question in questions.questions if not question.answerable]
    assert unanswerable and all(not question.facts.count and not question.sources for question in unanswerable)
    files = {path.name for path in DATA.iterdir()}
    expected = {source for question in questions.questions for source in question.sources}
    assert expected <= files and expected == files - {"questions.yaml"}, "every document has a question, every source exists"
    assert all(question.facts.count for question in questions.questions if question.answerable)


def write_questions(tmp_path: Path, data) -> Path:
    path = tmp_path / "questions.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_question_file_shorthands_and_defaults(tmp_path):
    path = write_questions(
        tmp_path,
        [
            {"question": "When was it lit?", "facts": ["1887", "March"], "sources": "lighthouse.md"},
            {"question": "Who won in 2023?", "answerable": False},
        ],
    )
    first, second = load_questions(path).questions
    assert (first.id, first.facts, first.sources) == ("q1", Facts(all_of=("1887", "March")), ("lighthouse.md",))
    assert (second.id, second.answerable) == ("q2", False)
    assert load_questions(path).corpus == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"questions": [{"question": "Q?", "fact": ["x"]}]}, r"unknown keys \['fact'\]"),
        ({"questions": [{"question": "Q?", "answerable": False, "facts": ["x"]}]}, "cannot expect facts"),
        ({"questions": [{"question": "Q?"}]}, "nothing to score"),
        ({"questions": [{"id": "a", "question": "Q?", "facts": ["x"]}, {"id": "a", "question": "R?", "facts": ["y"]}]}, "duplicate question ids"),
        ({"questions": [{"question": "Q?", "facts": {"one_of": ["x"]}}]}, "all_of"),
        ({"questions": []}, "non-empty `questions:` list"),
        ({"questions": [{"question": "Q?", "answerable": "no", "facts": ["x"]}]}, "true or false"),
    ],
)
def test_question_file_mistakes_are_named(tmp_path, data, message):
    with pytest.raises(QuestionFileError, match=message):
        load_questions(write_questions(tmp_path, data))


def test_missing_or_broken_question_file(tmp_path):
    with pytest.raises(QuestionFileError, match="not found"):
        load_questions(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("questions: [\n", encoding="utf-8")
    with pytest.raises(QuestionFileError, match="not valid YAML"):
        load_questions(broken)


def test_select_keeps_the_order_given_and_rejects_unknown_ids():
    questions = load_questions(SAMPLE_QUESTIONS)
    assert [q.id for q in questions.select(["quokkadb-port", "lighthouse-keeper"]).questions] == ["quokkadb-port", "lighthouse-keeper"]
    with pytest.raises(QuestionFileError, match="no question with id 'nope'"):
        questions.select(["nope"])


# --- scoring ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phrase", "found"),
    [
        ("It was first lit in 1887.", "1887", True),
        ("Seen from 220 miles", "22", False),
        ("In 2022 it", "22", False),
        ("Closed on Sundays", "sunday", True),
        ("team  HELIOTROPE won", "Heliotrope", True),
        ("the Mozilla Public\nLicense 2.0", "mozilla public license", True),
        ("It uses MPL-2.0.", "MPL-2.0", True),
        ("reheliotrope", "Heliotrope", False),
    ],
)
def test_contains_phrase(text, phrase, found):
    assert contains_phrase(text, phrase) is found


def test_find_facts_counts_any_of_as_one_fact():
    facts = Facts(all_of=("1887", "Olsen"), any_of=("14 March", "March 14"))
    assert find_facts(facts, "First lit on March 14, 1887.") == (["1887", "March 14"], ["Olsen"])
    assert find_facts(facts, "No idea.") == ([], ["1887", "Olsen", "14 March | March 14"])


@pytest.mark.parametrize(
    ("answer", "declines"),
    [
        ("I don't know.", True),
        ("I don\u2019t know based on the context.", True),
        ("The context does not mention the 2023 race.", True),
        ("There is no information about the population.", True),
        ("I cannot find the price in the passages.", True),
        ("The winner is not mentioned.", True),
        ("Team Heliotrope won the race [1].", False),
        ("The population of Arran Bay is 1,205,378.", False),
    ],
)
def test_says_dont_know(answer, declines):
    assert says_dont_know(answer) is declines


def source(number: int, chunk: str) -> Source:
    return Source(number=number, source=f"/docs/{number}.md", title=f"doc {number}", score=0.5, chunk=chunk)


def test_grounding_by_citation_quote_or_not_at_all():
    passages = [source(1, "It was first lit on 14 March 1887 and is 31 metres tall."), source(2, "Other text.")]
    assert grounding("It was lit in 1887 [1].", passages) == "citation"
    assert grounding("It was lit in 1887 [2, 5].", passages) == "citation"
    assert grounding("It was lit in 1887 [3].", passages) is None, "a marker pointing at no passage does not count"
    assert grounding("The lighthouse: it was first lit on 14 March 1887.", passages) == "quote"
    assert grounding("It was first lit in 1920 by sailors.", passages) is None


def test_source_matches_paths_urls_and_titles():
    assert source_matches("quokkadb.rst", "/home/me/data/quokkadb.rst")
    assert source_matches("data/quokkadb.rst", "/home/me/data/quokkadb.rst")
    assert not source_matches("db.rst", "/home/me/data/quokkadb.rst")
    assert source_matches("https://example.org/a", "https://example.org/a")
    assert source_matches("QuokkaDB", "/x/y.rst", title="QuokkaDB")


def test_retrieval_rank_and_reciprocal_rank():
    question = load_questions(SAMPLE_QUESTIONS).select(["quokkadb-port"]).questions[0]
    hits = [(Document("a", metadata={"source": f"/d/{name}"}), 0.9 - n / 10) for n, name in enumerate(["x.md", "quokkadb.rst", "quokkadb.rst"])]
    result = score_retrieval(question, hits)
    assert (result.rank, result.hit, result.reciprocal_rank) == (2, True, 0.5)
    assert score_retrieval(question, hits[:1]).reciprocal_rank == 0.0


# --- runs with fake models --------------------------------------------------------------------------------


class CountingEmbeddings(DeterministicFakeEmbedding):
    """Counts the questions embedded (retrieval must run once per question, not once per run)."""

    queries: int = 0

    def embed_query(self, text: str) -> list[float]:
        self.queries += 1
        return super().embed_query(text)


class ScriptedLLM(LLM):
    """Answers by the question in the prompt; a reply of ``None`` raises a backend error."""

    replies: dict[str, str | None]

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _call(self, prompt: str, stop=None, run_manager=None, **kwargs) -> str:
        question = prompt.rsplit("Question:", 1)[-1]
        for key, reply in self.replies.items():
            if key in question:
                if reply is None:
                    raise LLMBackendError("server fell over")
                return reply
        return "I don't know."


def count_words(text: str) -> int:
    return len(text.split()) + 1


def fake_factory(replies_by_model: dict[str, dict[str, str | None]]):
    """Load a scripted model by name (``None``: the default); an unknown name is not found."""

    def load(settings) -> LocalLLM:
        name = settings.llm_model or "default"
        if name not in replies_by_model:
            raise ModelNotFound(f"model file not found: {name}")
        llm = ScriptedLLM(replies=replies_by_model[name])
        return LocalLLM(llm, "fake", f"{name}.gguf", "chatml", 4096, 64, count_words)

    return load


QUESTIONS = {
    "corpus": [str(DATA)],
    "questions": [
        {"id": "lit", "question": "When was Kestrel Point Lighthouse first lit?", "sources": ["kestrel-point-lighthouse.md"], "facts": {"all_of": ["1887"]}},
        {"id": "license", "question": "Under which license is QuokkaDB released?", "sources": ["quokkadb.rst"], "facts": {"any_of": ["MPL-2.0", "Mozilla Public License"]}},
        {"id": "population", "question": "What is the population of Arran Bay?", "answerable": False},
    ],
}

GOOD = {"first lit": "It was first lit in 1887 [1].", "license": "QuokkaDB uses the Mozilla Public License [2].", "population": "I don't know."}
WEAK = {"first lit": "It was lit in 1920.", "license": None, "population": "About 12,000 people."}


@pytest.fixture
def question_file(tmp_path) -> Path:
    return write_questions(tmp_path, QUESTIONS)


@pytest.fixture
def settings(settings):
    """Loaders in this process: quicker, and these tests are not about loading."""
    return settings.with_overrides(isolate_loaders=False)


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

    poison = "Arran Bay"

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


def test_report_renders_table_markdown_json_and_chart(settings, question_file, fake_embeddings, tmp_path):
    report = run_eval(question_file, settings, models=["default", "weak"], embeddings=fake_embeddings, llm_factory=fake_factory({"default": GOOD, "weak": WEAK}))

    table = report.to_table().splitlines()
    assert table[0].split()[:3] == ["model", "·", "prompt"] and "hit@4" in table[0] and "don't know" in table[0]
    assert len(table) == 2 + 2 and "default · chatml/rag" in table[2] and table[3].rstrip().endswith("1/3")

    files = report.write(tmp_path / "out")
    markdown = Path(files["markdown"]).read_text(encoding="utf-8")
    assert "![runs side by side](eval.png)" in markdown and "## Retrieval" in markdown and "**failed**: server fell over" in markdown
    assert "no answer in the corpus" in markdown
    data = json.loads(Path(files["json"]).read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert [run["label"] for run in data["runs"]] == ["default · chatml/rag", "weak · chatml/rag"]
    assert data["runs"][1]["answers"][1]["error"] and data["retrieval"][2]["hit"] is None
    assert Path(files["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the CLI ----------------------------------------------------------------------------------------------------


@pytest.fixture
def eval_cli(settings, fake_embeddings, monkeypatch):
    """Run `rag eval` with fake embeddings and scripted models instead of the real ones."""
    import rag.embed
    import rag.eval

    monkeypatch.setattr(rag.embed, "load_embeddings", lambda settings: fake_embeddings)
    monkeypatch.setattr(rag.eval, "load_llm", fake_factory({"default": GOOD, "weak": WEAK}))
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
