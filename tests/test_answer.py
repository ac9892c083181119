"""Answering, summarizing and chatting, from Python and from the CLI.

Fast tier: a fake LLM (or a fake llama.cpp server on 127.0.0.1 for the CLI), fake
embeddings, a real Chroma store. Integration tier: the real models, a real llama.cpp server.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from langchain_core.documents import Document
from langchain_core.language_models import FakeListLLM, FakeStreamingListLLM
from langchain_core.language_models.fake import FakeListLLMError

from rag.answer import Answer, Assistant, NothingToSummarize, Summary, summarize
from rag.errors import EmptyQuestion
from rag.budget import ContextOverflow
from rag.chains import NO_CONTEXT_ANSWER, unmentioned_answer
from rag.cli import EXIT_ERROR, EXIT_OK, cli
from rag.errors import LLMBackendError
from rag.llm import LocalLLM
from rag.store import EmptyStore

DATA = Path(__file__).resolve().parent.parent / "data"
LIGHTHOUSE = "When was Kestrel Point Lighthouse first lit?"


def count_words(text: str) -> int:
    return len(text.split()) + 1


def fake_local(responses: list[str], *, n_ctx: int = 4096, max_tokens: int = 64, streaming: bool = True, **extra) -> LocalLLM:
    llm_class = FakeStreamingListLLM if streaming else FakeListLLM
    return LocalLLM(llm_class(responses=responses, **extra), "fake", "fake-model.gguf", "chatml", n_ctx, max_tokens, count_words)


@pytest.fixture
def indexed(settings, fake_embeddings):
    """Settings whose store holds the sample corpus, embedded with fake embeddings."""
    from rag.indexing import ingest

    report = ingest([str(DATA)], settings, fake_embeddings)
    assert report.chunks > 0
    return settings


def assistant_for(settings, fake_embeddings, local: LocalLLM) -> Assistant:
    return Assistant(settings, local_llm=local, embeddings=fake_embeddings)


# --- ask --------------------------------------------------------------------------------------------


def test_ask_returns_the_answer_with_numbered_sources(indexed, fake_embeddings):
    answer = assistant_for(indexed, fake_embeddings, fake_local(["It was first lit in 1887 [1]."])).ask(LIGHTHOUSE)
    assert answer.answer == "It was first lit in 1887 [1]."
    assert [source.number for source in answer.sources] == list(range(1, indexed.k + 1))
    assert all(source.source and source.chunk and source.score is not None for source in answer.sources)
    assert (answer.prompt, answer.model) == ("chatml/rag", "fake-model.gguf")
    assert answer.metadata["budget"]["prompt_tokens"] <= answer.metadata["budget"]["limit"]


def test_when_no_chunk_reaches_min_score_the_answer_is_dont_know_without_the_model(indexed, fake_embeddings):
    strict = indexed.model_copy(update={"min_score": 0.999})
    answer = assistant_for(strict, fake_embeddings, fake_local([])).ask(LIGHTHOUSE)  # no responses: a call would fail
    assert answer.answer == NO_CONTEXT_ANSWER and answer.sources == []
    assert answer.metadata["cut"] == "no chunk reached min_score 0.999"


def test_stream_yields_tokens_then_the_answer(indexed, fake_embeddings):
    items = list(assistant_for(indexed, fake_embeddings, fake_local(["Token by token."])).stream(LIGHTHOUSE))
    tokens, final = items[:-1], items[-1]
    assert len(tokens) > 1 and all(isinstance(token, str) for token in tokens)
    assert isinstance(final, Answer) and final.answer == "".join(tokens)


def test_empty_store_says_to_ingest(settings, fake_embeddings):
    assistant = assistant_for(settings, fake_embeddings, fake_local(["unused"]))
    with pytest.raises(EmptyStore, match=r"nothing is indexed yet.*rag ingest"):
        assistant.ask("anything?")


def test_question_longer_than_the_context_is_a_clear_error(indexed, fake_embeddings):
    assistant = assistant_for(indexed, fake_embeddings, fake_local(["unused"], n_ctx=300, max_tokens=100))
    with pytest.raises(ContextOverflow, match="shorten it, or raise n_ctx"):
        assistant.ask("why " * 400)


def refuse_to_embed(*args, **kwargs):
    raise AssertionError("the question was embedded")


@pytest.mark.parametrize("in_chat", [False, True])
def test_question_too_long_is_refused_before_it_is_embedded(indexed, fake_embeddings, monkeypatch, in_chat):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    monkeypatch.setattr(DeterministicFakeEmbedding, "embed_query", refuse_to_embed)
    monkeypatch.setattr(DeterministicFakeEmbedding, "embed_documents", refuse_to_embed)
    assistant = assistant_for(indexed, fake_embeddings, fake_local(["unused"], n_ctx=300, max_tokens=100))
    with pytest.raises(ContextOverflow, match="only 200 fit"):
        (assistant.chat() if in_chat else assistant).ask("why " * 50_000)


@pytest.mark.parametrize("question", ["", "   \n\t "])
@pytest.mark.parametrize("how", ["ask", "stream", "chat", "answer_from"])
def test_empty_question_is_refused_before_anything_loads(settings, question, how):
    assistant = Assistant(settings.with_overrides(llm_model=str(settings.data_dir / "never-loaded.gguf")))
    with pytest.raises(EmptyQuestion, match="the question is empty"):
        if how == "ask":
            assistant.ask(question)
        elif how == "stream":
            next(assistant.stream(question))
        elif how == "chat":
            assistant.chat().ask(question)
        else:
            assistant.answer_from(question, [Document(page_content="x")])
    assert assistant._local_llm is None and assistant._store is None and assistant._embeddings is None


def test_small_context_drops_lowest_ranked_chunks_and_says_so(indexed, fake_embeddings):
    settings = indexed.with_overrides(k=6)
    answer = assistant_for(settings, fake_embeddings, fake_local(["Short."], n_ctx=330, max_tokens=100)).ask(LIGHTHOUSE)
    budget = answer.metadata["budget"]
    assert budget["dropped"] or budget["trimmed"]
    assert budget["prompt_tokens"] <= 230 and len(answer.sources) == budget["kept"] < 6


def test_llm_failure_mid_stream_raises_and_yields_no_answer(indexed, fake_embeddings):
    local = fake_local(["This answer breaks off"], error_on_chunk_number=5)
    items = []
    with pytest.raises(FakeListLLMError):
        for item in assistant_for(indexed, fake_embeddings, local).stream(LIGHTHOUSE):
            items.append(item)
    assert items == list("This ") and not any(isinstance(item, Answer) for item in items)


def test_answer_from_given_documents_cites_them_in_order(settings):
    docs = [Document(page_content="QuokkaDB uses the MPL-2.0.", metadata={"source": "q.rst", "title": "QuokkaDB"})]
    answer = Assistant(settings, local_llm=fake_local(["MPL-2.0 [1]."])).answer_from("License?", docs)
    assert answer.answer == "MPL-2.0 [1]." and [(s.number, s.source) for s in answer.sources] == [(1, "q.rst")]


def test_hub_alias_prompt_is_used_offline(indexed, fake_embeddings):
    settings = indexed.with_overrides(prompt="rlm/rag-prompt")
    answer = assistant_for(settings, fake_embeddings, fake_local(["ok"])).ask(LIGHTHOUSE)
    assert answer.prompt == "generic/rag"


def test_a_prompt_that_cannot_answer_is_refused(indexed, fake_embeddings):
    from rag.prompts import PromptNotFound

    settings = indexed.with_overrides(prompt="chatml/summarize")
    with pytest.raises(PromptNotFound, match="cannot answer questions"):
        assistant_for(settings, fake_embeddings, fake_local(["ok"])).ask(LIGHTHOUSE)


# --- summarize --------------------------------------------------------------------------------------


def test_summarize_documents_that_fit_in_one_prompt(settings):
    docs = [Document(page_content="Short text.", metadata={"source": "a.md", "title": "A"})]
    summary = Assistant(settings, local_llm=fake_local(["A short summary [1]."])).summarize(docs)
    assert isinstance(summary, Summary)
    assert (summary.summary, summary.method, summary.prompt) == ("A short summary [1].", "stuff", "chatml/summarize")
    assert summary.metadata["calls"] == 1 and summary.sources[0].source == "a.md"


def test_summarize_map_reduces_documents_longer_than_the_context(settings):
    from rag.answer import load_documents

    docs, failures = load_documents([DATA], settings)
    assert not failures
    summary = Assistant(settings, local_llm=fake_local(["Combined [1]."], n_ctx=250, max_tokens=40)).summarize(docs)
    assert summary.method == "map_reduce" and summary.summary == "Combined [1]." and summary.prompt == "chatml/map+reduce"
    assert summary.metadata["groups"] >= 2 and summary.metadata["calls"] == summary.metadata["groups"] + 1
    assert len(summary.sources) >= len(docs), "long documents appear as their parts"


class StopRecordingLLM(FakeListLLM):
    """A FakeListLLM that records the stop sequences of each call."""

    stops: list = []

    def _call(self, prompt, stop=None, run_manager=None, **kwargs):
        self.stops.append(list(stop or []))
        return super()._call(prompt, stop, run_manager, **kwargs)


def test_generic_answers_stop_at_a_blank_line_and_summaries_do_not(settings, fake_embeddings):
    docs = [Document(page_content="QuokkaDB is an embedded database.\n\nIt is MPL-2.0 licensed.", metadata={"source": "q.rst"})]
    llm = StopRecordingLLM(responses=["An answer [1].", "A summary.\n\nWith a second paragraph [1]."], stops=[])
    assistant = Assistant(settings, local_llm=LocalLLM(llm, "fake", "plain.gguf", "generic", 4096, 64, count_words))
    assistant.answer_from("What is QuokkaDB?", docs)
    summary = assistant.summarize(docs)
    answer_stops, summary_stops = llm.stops
    assert "\n\n" in answer_stops and "\n\n" not in summary_stops
    assert summary.summary == "A summary.\n\nWith a second paragraph [1]."


def test_summarize_paths_reports_failures_and_refuses_nothing(settings, tmp_path):
    with pytest.raises(NothingToSummarize):
        summarize([tmp_path / "missing.md"], settings)


def test_summarize_takes_paths_and_returns_failures_with_the_summary(settings, tmp_path):
    missing = tmp_path / "missing.md"
    assistant = Assistant(settings, local_llm=fake_local(["Quokka [1]."]))
    items = list(assistant.stream_summary([DATA / "quokkadb.rst", missing]))
    failure, summary = items[0], items[-1]
    assert failure.source == str(missing) and isinstance(summary, Summary) and summary.failures == [failure]
    data = summary.to_dict(chunks=False)
    assert data["failures"] == [{"source": str(missing), "reason": failure.reason}]
    assert set(data["sources"][0]) == {"number", "source", "title", "part"} and "chunk" in summary.to_dict()["sources"][0]


def test_nothing_to_summarize_names_each_failure(settings, tmp_path):
    with pytest.raises(NothingToSummarize, match="missing.md") as caught:
        summarize([tmp_path / "missing.md"], settings)
    assert [failure.source for failure in caught.value.failures] == [str(tmp_path / "missing.md")]


def test_answer_to_dict_without_chunks_keeps_how_each_source_is_cited(settings, fake_embeddings):
    docs = [Document(page_content="QuokkaDB is MPL-2.0 licensed.", metadata={"source": "q.rst", "title": "Q", "score": 0.5})]
    answer = Assistant(settings, local_llm=fake_local(["MPL-2.0 [1]."])).answer_from("Which license?", docs)
    assert answer.to_dict(chunks=False)["sources"] == [{"number": 1, "source": "q.rst", "title": "Q", "score": 0.5}]
    assert answer.to_dict()["sources"][0]["chunk"] == "QuokkaDB is MPL-2.0 licensed."


# --- chat -------------------------------------------------------------------------------------------


def test_chat_rewrites_follow_ups_and_keeps_a_bounded_window(indexed, fake_embeddings):
    # responses in call order: answer 1, then (condense, answer) for each follow-up
    llm = ["QuokkaDB is a storage engine [1].", "What is the license of QuokkaDB?", "MPL-2.0 [1].", "Who is Pip?", "The mascot [1]."]
    session = assistant_for(indexed, fake_embeddings, fake_local(llm, streaming=False)).chat(history_turns=1)
    first = session.ask("What is QuokkaDB?")
    assert (first.metadata["standalone_question"], first.metadata["condense"]) == ("What is QuokkaDB?", "as_asked")
    second = session.ask("And what about its license?")
    assert (second.metadata["standalone_question"], second.metadata["condense"]) == ("What is the license of QuokkaDB?", "rewrite")
    assert second.answer == "MPL-2.0 [1]." and second.question == "And what about its license?"
    session.ask("And its mascot?")
    assert [message.text for message in session.history] == ["And its mascot?", "The mascot [1]."]


def test_chat_falls_back_when_the_rewrite_is_not_a_question_and_says_so(indexed, fake_embeddings):
    llm = ["QuokkaDB is a storage engine [1].", "It is licensed under MPL-2.0.", "MPL-2.0 [1]."]
    session = assistant_for(indexed, fake_embeddings, fake_local(llm, streaming=False)).chat()
    session.ask("What is QuokkaDB?")
    follow_up = session.ask("And what about its license?")
    assert follow_up.metadata["condense"] == "fallback"
    assert follow_up.metadata["standalone_question"] == "What is QuokkaDB? And what about its license?"


def test_failed_chat_turn_is_not_remembered(indexed, fake_embeddings):
    session = assistant_for(indexed, fake_embeddings, fake_local(["boom boom"], error_on_chunk_number=2)).chat()
    with pytest.raises(FakeListLLMError):
        session.ask("What is QuokkaDB?")
    assert session.history == []


# --- the CLI over a fake llama.cpp server -----------------------------------------------------------


class FakeLlamaServer(http.server.BaseHTTPRequestHandler):
    """Speaks enough of llama.cpp's server API for the CLI: /props, /tokenize, /completion."""

    mode = "ok"
    reply = ["It ", "was ", "first ", "lit ", "in ", "1887 ", "[1]."]

    def do_GET(self):  # noqa: N802
        body = {"model_path": "/models/fake-chatml.gguf", "chat_template": "<|im_start|>", "default_generation_settings": {"n_ctx": 2048}}
        self._json(body)

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path == "/tokenize" and self.mode == "tokenize-500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "tokenizer crashed"}')
            return
        if self.path == "/tokenize":
            self._json({"tokens": list(range(count_words(request["content"])))})
            return
        if self.mode == "http-500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "model crashed"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for index, token in enumerate(self.reply):
            if index == 3 and self.mode == "error-event":
                self.wfile.write(b'data: {"error": {"code": 500, "message": "slot crashed"}}\n\n')
                return
            if index == 3 and self.mode == "cut":
                return  # the connection closes without the final event
            self.wfile.write(f"data: {json.dumps({'content': token, 'stop': False})}\n\n".encode())
            self.wfile.flush()
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


@pytest.fixture
def fake_server():
    servers = []

    def start(mode: str = "ok") -> str:
        handler = type("Handler", (FakeLlamaServer,), {"mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def rag_cli(indexed, fake_embeddings, monkeypatch):
    """Run the CLI on the indexed store with fake embeddings; the LLM is whatever server is named."""
    import rag.embed

    monkeypatch.setattr(rag.embed, "load_embeddings", lambda settings: fake_embeddings)
    monkeypatch.setenv("RAG_DATA_DIR", str(indexed.data_dir))

    def run(*args: str, server: str, input: str | None = None):
        return CliRunner().invoke(cli, [*args, "--backend", "llamafile", "--server", server], input=input)

    return run


def test_cli_ask_streams_the_answer_then_lists_sources(rag_cli, fake_server):
    result = rag_cli("ask", LIGHTHOUSE, server=fake_server())
    assert result.exit_code == EXIT_OK, result.output
    answer, _, sources = result.stdout.partition("Sources:")
    assert answer.strip() == "It was first lit in 1887 [1]."
    assert "  [1] " in sources and "score" in sources


def test_cli_ask_json_shape(rag_cli, fake_server):
    result = rag_cli("ask", LIGHTHOUSE, "--json", server=fake_server())
    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert {"answer", "sources", "prompt", "model"} <= data.keys()
    assert data["answer"] == "It was first lit in 1887 [1]." and data["prompt"] == "chatml/rag"
    assert data["model"] == "fake-chatml.gguf"
    assert data["sources"] and all({"source", "title", "score"} <= source.keys() for source in data["sources"])


def test_cli_ask_on_an_empty_store_says_to_ingest(fake_server, settings, monkeypatch, fake_embeddings):
    import rag.embed

    monkeypatch.setattr(rag.embed, "load_embeddings", lambda settings: fake_embeddings)
    monkeypatch.setenv("RAG_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["ask", "hi", "--backend", "llamafile", "--server", fake_server()])
    assert result.exit_code == EXIT_ERROR
    assert "nothing is indexed yet" in result.stderr and "rag ingest" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("mode", ["error-event", "cut", "http-500", "tokenize-500"])
@pytest.mark.parametrize("as_json", [False, True])
def test_cli_llm_failure_mid_stream_is_an_error_never_an_answer(rag_cli, fake_server, mode, as_json):
    result = rag_cli("ask", LIGHTHOUSE, *(["--json"] if as_json else []), server=fake_server(mode))
    assert result.exit_code == EXIT_ERROR
    assert result.stderr.startswith("error: llama.cpp server at http://127.0.0.1:")
    assert "Sources:" not in result.stdout and "Traceback" not in result.output
    if as_json:
        assert result.stdout == ""


def test_cli_summarize_json(rag_cli, fake_server):
    result = rag_cli("summarize", str(DATA / "quokkadb.rst"), "--json", server=fake_server())
    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert data["summary"] == "It was first lit in 1887 [1]." and data["method"] == "stuff"
    assert data["sources"][0]["source"].endswith("quokkadb.rst") and data["failures"] == []


def test_cli_summarize_with_a_missing_input_is_partial(rag_cli, fake_server, tmp_path):
    result = rag_cli("summarize", str(DATA / "quokkadb.rst"), str(tmp_path / "gone.md"), server=fake_server())
    assert result.exit_code == 3 and "gone.md" in result.stderr and "Sources:" in result.stdout


@pytest.mark.parametrize("ending", ["exit\n", ""], ids=["exit", "ctrl-d"])
def test_cli_chat_answers_until_exit_or_end_of_input(rag_cli, fake_server, ending):
    result = rag_cli("chat", server=fake_server(), input=f"What is QuokkaDB?\n\nAnd its license?\n{ending}")
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.count("It was first lit in 1887 [1].") == 2 and result.stdout.count("Sources:") == 2


def test_cli_chat_reports_a_failed_turn_and_goes_on(rag_cli, fake_server):
    result = rag_cli("chat", server=fake_server("error-event"), input="What is QuokkaDB?\nexit\n")
    assert result.exit_code == EXIT_OK and "slot crashed" in result.stderr and "Sources:" not in result.stdout


# --- real models (integration) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, embeddings):
    """Settings whose store holds the sample corpus, embedded with the real embedder."""
    from rag.indexing import ingest
    from rag.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("rag-real"), temperature=0.0, max_tokens=96)
    ingest([str(DATA)], settings, embeddings)
    return settings


@pytest.fixture(scope="module")
def small_context_llm():
    """The real default model with a 512-token context and a 64-token answer budget."""
    from rag.llm import load_local_llm
    from rag.settings import Settings

    return load_local_llm(Settings(temperature=0.0, max_tokens=64, n_ctx=512))


def check_real_answer(items: list) -> Answer:
    tokens, answer = items[:-1], items[-1]
    assert isinstance(answer, Answer)
    assert len(tokens) > 1, "the answer must arrive token by token"
    assert answer.answer and answer.answer == "".join(tokens).strip()
    assert any(source.source.endswith("kestrel-point-lighthouse.md") for source in answer.sources)
    assert not any(marker in answer.answer for marker in ("<|im_start|>", "<|im_end|>"))
    return answer


@pytest.mark.integration
def test_real_ask_streams_with_llamacpp(real_store, embeddings, local_llm):
    answer = check_real_answer(list(Assistant(real_store, local_llm=local_llm, embeddings=embeddings).stream(LIGHTHOUSE)))
    assert answer.metadata["budget"]["prompt_tokens"] <= local_llm.n_ctx - local_llm.max_tokens


@pytest.mark.integration
def test_real_ask_streams_with_gpt4all(real_store, embeddings):
    assistant = Assistant(real_store.with_overrides(backend="gpt4all"), embeddings=embeddings)
    check_real_answer(list(assistant.stream(LIGHTHOUSE)))


@pytest.mark.integration
def test_real_ask_streams_with_llamafile(real_store, embeddings, llama_server):
    assistant = Assistant(real_store.with_overrides(backend="llamafile", llamafile_url=llama_server), embeddings=embeddings)
    answer = check_real_answer(list(assistant.stream(LIGHTHOUSE)))
    assert answer.metadata["backend"] == "llamafile"


@pytest.mark.integration
def test_real_question_naming_what_no_document_mentions_is_answered_dont_know_without_the_model(real_store, embeddings, local_llm):
    answer = Assistant(real_store, local_llm=local_llm, embeddings=embeddings).ask("What is the LFS limit of the bakery?")
    assert answer.answer == unmentioned_answer(["LFS"]) and answer.metadata["unmentioned"] == ["LFS"]
    assert answer.sources  # the closest passages are still listed
    answered = Assistant(real_store, local_llm=local_llm, embeddings=embeddings).ask("Which port does QuokkaDB listen on?")
    assert "unmentioned" not in answered.metadata and answered.sources[0].source.endswith("quokkadb.rst")


@pytest.mark.integration
def test_real_small_context_fits_the_prompt_and_records_cuts(real_store, embeddings, small_context_llm):
    settings = real_store.with_overrides(k=8, min_score=0)  # eight chunks, however weak: the budget is under test
    answer = Assistant(settings, local_llm=small_context_llm, embeddings=embeddings).ask(LIGHTHOUSE)
    budget = answer.metadata["budget"]
    assert budget["limit"] == 512 - 64 and budget["prompt_tokens"] <= budget["limit"]
    assert budget["dropped"] or budget["trimmed"], "eight chunks cannot fit 448 tokens"
    assert answer.answer


@pytest.mark.integration
def test_real_question_longer_than_the_context_is_a_clear_error(real_store, embeddings, small_context_llm):
    with pytest.raises(ContextOverflow):
        Assistant(real_store, local_llm=small_context_llm, embeddings=embeddings).ask("Tell me about the lighthouse. " * 120)


@pytest.mark.integration
def test_real_summarize_stuffs_a_short_document(local_llm, settings):
    from rag.answer import load_documents

    docs, _ = load_documents([DATA / "quokkadb.rst"], settings)
    summary = Assistant(settings, local_llm=local_llm).summarize(docs)
    assert summary.method == "stuff" and summary.summary
    assert local_llm.count_tokens(summary.summary) < local_llm.max_tokens


@pytest.mark.integration
def test_real_generic_family_summary_is_not_cut_at_the_first_blank_line(settings):
    """The generic family's answers stop at a blank line; its summaries must not (they printed `==========`)."""
    import re

    from rag.answer import load_documents
    from rag.llm import load_local_llm

    generic = load_local_llm(settings.with_overrides(prompt="generic", max_tokens=256))
    assert generic.family == "generic" and "\n\n" not in generic.llm.stop
    docs, _ = load_documents([DATA / "quokkadb.rst"], settings)
    summary = Assistant(settings.with_overrides(prompt="generic"), local_llm=generic).summarize(docs)
    text = summary.summary
    sentences = [part for part in re.split(r"(?<=[.!?])\s+", text) if len(part.split()) >= 3]
    assert summary.method == "stuff" and len(sentences) >= 3, f"not a few sentences: {text!r}"
    assert len(re.sub(r"[=\-\s]", "", text)) > 100, f"only a heading: {text!r}"


@pytest.mark.integration
def test_real_question_of_200000_characters_is_refused_at_once_without_embedding(real_store, embeddings, local_llm):
    import time

    from langchain_core.embeddings import Embeddings

    from rag.embed import NFCEmbeddings

    class RefusingEmbeddings(Embeddings):
        def embed_documents(self, texts):
            raise AssertionError("embedded documents")

        def embed_query(self, text):
            raise AssertionError(f"embedded a query of {len(text)} characters")

    watched = NFCEmbeddings(RefusingEmbeddings(), embeddings.model_id)  # the store's embedder, as far as the store can tell
    assistant = Assistant(real_store, local_llm=local_llm, embeddings=watched)
    question = "Tell me everything about the lighthouse keeper and the harbour. " * 3200
    assert len(question) >= 200_000
    started = time.monotonic()
    with pytest.raises(ContextOverflow, match=rf"but only {local_llm.n_ctx - local_llm.max_tokens} fit"):
        assistant.ask(question)
    assert time.monotonic() - started < 10


@pytest.mark.integration
def test_real_summarize_map_reduces_the_corpus_in_a_small_context(small_context_llm, settings):
    from rag.answer import load_documents

    docs, _ = load_documents([DATA], settings)
    summary = Assistant(settings, local_llm=small_context_llm).summarize(docs)
    assert summary.method == "map_reduce" and summary.metadata["groups"] >= 2
    assert summary.summary.strip()
    assert not any(marker in summary.summary for marker in ("<|im_start|>", "<|im_end|>"))


@pytest.mark.integration
def test_real_chat_answers_a_follow_up_from_history(real_store, embeddings, local_llm):
    session = Assistant(real_store, local_llm=local_llm, embeddings=embeddings).chat(history_turns=2)
    first = session.ask("What is QuokkaDB?")
    assert first.metadata["condense"] == "as_asked" and first.metadata["standalone_question"] == "What is QuokkaDB?"
    follow_up = session.ask("And what about its license?")
    standalone, method = follow_up.metadata["standalone_question"], follow_up.metadata["condense"]
    from rag.chains import build_condense_chain, format_history
    from rag.prompts import get_prompt

    condense = build_condense_chain(get_prompt("chatml", "condense"), local_llm.for_task("condense"))
    rewrite = condense.invoke({"history": format_history(session.history[:2]), "question": "And what about its license?"})
    if method == "rewrite":  # the model's own standalone question, used as it is
        assert standalone == rewrite and standalone.endswith("?")
    else:  # the rewrite was not a question: the first question with the follow-up
        assert method == "fallback" and not (rewrite.endswith("?") and len(rewrite.split()) <= 40)
        assert standalone == "What is QuokkaDB? And what about its license?"
    assert follow_up.answer and follow_up.sources
    assert len(session.history) == 4


@pytest.mark.integration
def test_real_server_dying_mid_stream_is_an_error(real_store, embeddings):
    from rag.models import default_llm_path
    from rag.server import LlamaServer

    with LlamaServer(default_llm_path(), threads=2) as server:
        settings = real_store.with_overrides(backend="llamafile", llamafile_url=server.url, max_tokens=256)
        items = []
        with pytest.raises(LLMBackendError, match="failed mid-stream|closed the stream"):
            for item in Assistant(settings, embeddings=embeddings).stream("Describe Kestrel Point Lighthouse in detail."):
                items.append(item)
                if len(items) == 2:
                    server.process.kill()  # the server dies while the answer streams
    assert len(items) >= 2 and not any(isinstance(item, Answer) for item in items)
