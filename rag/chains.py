"""LCEL chains: they take Runnables (retriever, prompt, LLM) in and give Runnables out.

Example::

    from rag.chains import build_retrieval_qa_chain, build_retriever
    chain = build_retrieval_qa_chain(build_retriever(store, k=4), prompt, llm)
    result = chain.invoke("What is X?")   # {"question", "docs", "answer"}
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough


def format_docs(docs: Sequence[Document]) -> str:
    """Number the chunks so an answer can cite them as [1], [2], ..."""
    return "\n\n".join(
        f"[{number}] {doc.metadata.get('title') or doc.metadata.get('source', '')}\n{doc.page_content}"
        for number, doc in enumerate(docs, start=1)
    )


def build_retriever(store, k: int = 4) -> Runnable[str, list[Document]]:
    """A retriever Runnable that records each chunk's similarity in ``metadata["score"]``."""

    def retrieve(query: str) -> list[Document]:
        results = store.similarity_search_with_score(query, k=k)
        return [Document(page_content=doc.page_content, metadata={**doc.metadata, "score": 1.0 - distance}) for doc, distance in results]

    return RunnableLambda(retrieve, name="retriever")


def build_answer_chain(prompt: BasePromptTemplate, llm: BaseLanguageModel) -> Runnable[dict, str]:
    """QA over given documents: ``{"docs": [...], "question": str}`` -> answer text."""
    return (
        RunnablePassthrough.assign(context=itemgetter("docs") | RunnableLambda(format_docs))
        | prompt
        | llm
        | StrOutputParser()
    )


def build_retrieval_qa_chain(retriever: Runnable, prompt: BasePromptTemplate, llm: BaseLanguageModel) -> Runnable[str, dict]:
    """Retrieval QA: question -> ``{"question", "docs", "answer"}`` (the docs are the sources)."""
    return RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=build_answer_chain(prompt, llm))
