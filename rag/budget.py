"""Context budgeting: fit ranked documents into a model's context window.

Token counts come from the model's own tokenizer (``LocalLLM.count_tokens``).
A prompt never exceeds ``n_ctx`` minus the answer budget (``max_tokens``):
the lowest-ranked documents are trimmed or dropped first, and the
:class:`BudgetReport` says what happened. Documents that cannot share one
prompt are packed into groups for map-reduce (:meth:`ContextBudget.pack`).

Example::

    from rag.budget import ContextBudget
    budget = ContextBudget.from_llm(local_llm)
    kept, report = budget.fit(ranked_docs, lambda docs: prompt_text_for(docs))
    report.dropped   # sources that did not fit
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from langchain_core.documents import Document

from rag.errors import RagError

logger = logging.getLogger(__name__)

MAX_CHARS_PER_TOKEN = 8
"""Bounds the search for the longest prefix that fits: no real text averages more per token."""

Render = Callable[[list[Document]], str]
"""Turns the documents into the full prompt text the model will see."""


class ContextOverflow(RagError, ValueError):
    """The prompt cannot fit the context window even without documents."""


@dataclass
class BudgetReport:
    """How the documents were fitted into the context (recorded in results' metadata)."""

    n_ctx: int
    answer_tokens: int
    prompt_tokens: int = 0
    kept: int = 0
    trimmed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return self.n_ctx - self.answer_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "limit": self.limit}


@dataclass
class ContextBudget:
    """Token arithmetic for one model: its counter, context size and answer budget.

    Args:
        count_tokens: the model's tokenizer, counting a prompt as the backend will.
        n_ctx: the context window in tokens.
        answer_tokens: tokens reserved for the answer (the model's ``max_tokens``).
        min_trim_tokens: a trimmed document keeps at least this many tokens, else it is dropped.
    """

    count_tokens: Callable[[str], int]
    n_ctx: int
    answer_tokens: int
    min_trim_tokens: int = 32

    @classmethod
    def from_llm(cls, local_llm) -> ContextBudget:
        """The budget of a :class:`rag.llm.LocalLLM`."""
        return cls(local_llm.count_tokens, local_llm.n_ctx, local_llm.max_tokens)

    @property
    def limit(self) -> int:
        """The most tokens a prompt may have."""
        return self.n_ctx - self.answer_tokens

    def report(self) -> BudgetReport:
        return BudgetReport(self.n_ctx, self.answer_tokens)

    def fits(self, text: str) -> bool:
        return self.count_tokens(text) <= self.limit

    def check_base(self, render: Render, what: str = "the question") -> int:
        """Tokens of the prompt without documents; raise :class:`ContextOverflow` if even that is too long."""
        base = self.count_tokens(render([]))
        if base > self.limit:
            raise ContextOverflow(
                f"{what} and its prompt take {base} tokens, but only {self.limit} fit "
                f"(context {self.n_ctx} minus {self.answer_tokens} for the answer): "
                "shorten it, or raise n_ctx (RAG_N_CTX) or lower max_tokens"
            )
        return base

    def fit(self, docs: Sequence[Document], render: Render, what: str = "the question") -> tuple[list[Document], BudgetReport]:
        """Keep the best-ranked documents that fit; trim the first that does not, drop the rest.

        Args:
            docs: documents, best first.
            render: builds the full prompt text from a list of documents.
            what: names the non-document part of the prompt in the overflow error.

        Returns:
            The documents to use (a trimmed one carries ``metadata["trimmed"] = True``) and the report.
        """
        report = self.report()
        report.prompt_tokens = self.check_base(render, what)
        kept: list[Document] = []
        for index, doc in enumerate(docs):
            tokens = self.count_tokens(render([*kept, doc]))
            if tokens <= self.limit:
                kept.append(doc)
                report.prompt_tokens = tokens
                continue
            trimmed = self._trim(doc, kept, render)
            if trimmed is not None:
                kept.append(trimmed)
                report.trimmed.append(_source(doc))
                report.prompt_tokens = self.count_tokens(render(kept))
            report.dropped.extend(_source(rest) for rest in docs[index + (trimmed is not None) :])
            break
        report.kept = len(kept)
        if report.trimmed or report.dropped:
            logger.info("context budget: kept %d, trimmed %d, dropped %d documents", report.kept, len(report.trimmed), len(report.dropped))
        return kept, report

    def pack(self, docs: Sequence[Document], render: Render, what: str = "the prompt") -> list[list[Document]]:
        """Group documents, in order, into as few prompts as fit; split a document too long for one.

        Every group renders within :attr:`limit`. Parts of a split document carry
        ``metadata["part"]`` (1, 2, ...).
        """
        self.check_base(render, what)
        groups: list[list[Document]] = []
        current: list[Document] = []
        pending = list(docs)
        while pending:
            doc = pending.pop(0)
            if self.count_tokens(render([*current, doc])) <= self.limit:
                current.append(doc)
                continue
            if current:
                groups.append(current)
                current = []
                pending.insert(0, doc)
                continue
            parts = self._split(doc, render)
            current.append(parts[0])
            pending[0:0] = parts[1:]
        if current:
            groups.append(current)
        return groups

    def _trim(self, doc: Document, kept: list[Document], render: Render) -> Document | None:
        """The longest prefix of ``doc`` (cut at whitespace) that fits after ``kept``, or ``None``."""
        text = doc.page_content
        low, high = 0, min(len(text), self.limit * MAX_CHARS_PER_TOKEN)
        while low < high:  # the longest prefix length that fits
            middle = (low + high + 1) // 2
            if self.count_tokens(render([*kept, _with_text(doc, _cut(text, middle))])) <= self.limit:
                low = middle
            else:
                high = middle - 1
        prefix = _cut(text, low)
        if not prefix or self.count_tokens(prefix) < self.min_trim_tokens:
            return None
        return _with_text(doc, prefix, trimmed=True)

    def _split(self, doc: Document, render: Render) -> list[Document]:
        """Cut a document too long for one prompt into parts that each fit alone."""
        parts: list[Document] = []
        rest = doc.page_content
        while rest:
            low, high = 1, min(len(rest), self.limit * MAX_CHARS_PER_TOKEN)
            while low < high:
                middle = (low + high + 1) // 2
                if self.count_tokens(render([_with_text(doc, _cut(rest, middle))])) <= self.limit:
                    low = middle
                else:
                    high = middle - 1
            piece = _cut(rest, low) or rest[:low]
            parts.append(_with_text(doc, piece, part=len(parts) + 1))
            rest = rest[len(piece) :].lstrip()
        return parts


def _cut(text: str, length: int) -> str:
    """``text[:length]``, moved back to the last whitespace when that does not lose too much."""
    if length >= len(text):
        return text
    prefix = text[:length]
    space = prefix.rfind(" ")
    newline = prefix.rfind("\n")
    boundary = max(space, newline)
    return prefix[:boundary].rstrip() if boundary > length // 2 else prefix


def _with_text(doc: Document, text: str, **extra) -> Document:
    return Document(page_content=text, metadata={**doc.metadata, **extra}, id=doc.id)


def _source(doc: Document) -> str:
    return str(doc.metadata.get("source", ""))
