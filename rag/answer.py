"""Answer questions from the indexed documents, with their sources.

Example::

    from rag.answer import ask
    answer = ask("Who maintains the project?")
    print(answer.answer, [s.source for s in answer.sources])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from rag.chains import build_retrieval_qa_chain, build_retriever
from rag.llm import LocalLLM, load_llm
from rag.prompts import get_prompt
from rag.settings import Settings
from rag.store import open_store, require_nonempty


@dataclass
class Source:
    number: int
    source: str
    title: str
    score: float
    chunk: str

    @classmethod
    def from_document(cls, number: int, doc: Document) -> Source:
        meta = doc.metadata
        return cls(number, meta.get("source", ""), meta.get("title", ""), round(float(meta.get("score", 0.0)), 4), doc.page_content)


@dataclass
class Answer:
    question: str
    answer: str
    sources: list[Source]
    prompt: str
    model: str
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Assistant:
    """Holds the loaded models and store so several questions reuse them."""

    def __init__(self, settings: Settings | None = None, *, local_llm: LocalLLM | None = None, embeddings: Embeddings | None = None):
        self.settings = settings or Settings()
        if embeddings is None:
            from rag.embed import load_embeddings

            embeddings = load_embeddings(self.settings)
        self.store = open_store(self.settings, embeddings)
        self.local_llm = local_llm or load_llm(self.settings)
        self.prompt_name = f"{self.local_llm.family}/rag"

    def stream(self, question: str) -> Iterator[str | Answer]:
        """Yield answer tokens as they come, then the finished :class:`Answer`."""
        require_nonempty(self.store, self.settings)
        chain = build_retrieval_qa_chain(build_retriever(self.store, self.settings.k), get_prompt(self.prompt_name), self.local_llm.llm)
        docs: list[Document] = []
        parts: list[str] = []
        for chunk in chain.stream(question):
            docs = chunk.get("docs", docs)
            if "answer" in chunk:
                parts.append(chunk["answer"])
                yield chunk["answer"]
        yield Answer(
            question=question,
            answer="".join(parts).strip(),
            sources=[Source.from_document(number, doc) for number, doc in enumerate(docs, start=1)],
            prompt=self.prompt_name,
            model=self.local_llm.model_name,
        )

    def ask(self, question: str) -> Answer:
        *_, answer = self.stream(question)
        return answer


def ask(question: str, settings: Settings | None = None) -> Answer:
    """One question, answered with its sources (loads the models; use :class:`Assistant` for many)."""
    return Assistant(settings).ask(question)
