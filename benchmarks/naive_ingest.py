"""LangChain's local-models guide pipeline, alone in its process: what ``bench_ingest.py`` times cold.

``WebBaseLoader`` -> ``RecursiveCharacterTextSplitter(500, 0)`` -> ``Chroma.from_documents`` with
the GPT4All embedder rag uses (the same GGUF file). Run::

    python benchmarks/naive_ingest.py STORE_FOLDER URL...
"""

import os
import sys

os.environ.setdefault("USER_AGENT", "rag-benchmark")  # WebBaseLoader warns without one

from langchain_chroma import Chroma  # noqa: E402
from langchain_community.document_loaders import WebBaseLoader  # noqa: E402
from langchain_text_splitters import RecursiveCharacterTextSplitter  # noqa: E402

from rag.embed import load_embeddings  # noqa: E402
from rag.settings import Settings  # noqa: E402

folder, urls = sys.argv[1], sys.argv[2:]
splits = RecursiveCharacterTextSplitter(chunk_size=500, chunk_overlap=0).split_documents(WebBaseLoader(urls).load())
Chroma.from_documents(documents=splits, embedding=load_embeddings(Settings()), persist_directory=folder)
print(len(splits))
