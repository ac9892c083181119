"""The in-process llama.cpp backend: a call's stops add to the LLM's own; the model's own tokenizer (integration)."""

from __future__ import annotations

import pytest

from rag.backends.llamacpp import llama_cpp_token_counter
from rag.models import default_llm_path

CHATML_QUESTION = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France? Answer in one short sentence.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.mark.integration
def test_llamacpp_takes_a_calls_stops_in_addition_to_its_own(local_llm):
    assert local_llm.llm.stop == ["<|im_end|>", "<|im_start|>"]
    text = local_llm.llm.bind(stop=["Paris"]).invoke(CHATML_QUESTION)
    assert text.strip() and "Paris" not in text
    assert local_llm.count_tokens(text) < local_llm.max_tokens


@pytest.mark.integration  # loads the real model's vocabulary
def test_token_counter_uses_the_models_own_tokenizer(local_llm):
    count = llama_cpp_token_counter(default_llm_path())
    assert count(CHATML_QUESTION) == local_llm.count_tokens(CHATML_QUESTION)
    assert count("<|im_start|>") < len("<|im_start|>"), "chat markers are special tokens, not characters"
