"""The LangChain LLM class of each backend (llama.cpp, GPT4All, a llama.cpp server); :mod:`rag.llm` chooses among them."""
