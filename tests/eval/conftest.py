"""Shared by the tests of ``rag.eval``: the sample question file, scripted models, and a small question file.

Fast tier: fake LLMs and fake embeddings over a real Chroma store. The test modules import
the helpers below (``from tests.eval.conftest import ...``); the fixtures come by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.llms import LLM

from rag.llm import LLMBackendError, LocalLLM
from rag.models import ModelNotFound
from tests.conftest import SAMPLE_DATA

DATA = SAMPLE_DATA
SAMPLE_QUESTIONS = DATA / "questions.yaml"


def write_questions(tmp_path: Path, data) -> Path:
    path = tmp_path / "questions.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


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
