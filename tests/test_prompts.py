"""Prompt registry: files and their variables, hub aliases offline, family detection, real-model templates."""

from __future__ import annotations

import json
import re

import pytest
from langchain_core.load import dumpd
from langchain_core.prompts import ChatPromptTemplate

from rag import prompts
from rag.prompts import (
    KINDS,
    HubPullError,
    PromptFileError,
    PromptNotFound,
    choose_family,
    detect_family,
    get_family,
    get_spec,
    load_families,
    resolve_prompt,
)

FAMILIES = ["chatml", "gemma", "generic", "llama2", "llama3", "zephyr"]

# Shortened real chat templates, as found in GGUF `tokenizer.chat_template` metadata.
TEMPLATES = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{{ bos_token + '[INST] <<SYS>>\\n' + content }}{% endif %}{{ ' [/INST]' }}",
    "zephyr": "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}{% endif %}{% endfor %}{{ '<|assistant|>' }}",
    "gemma": "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}",
    "llama3": "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}",
}


def test_every_family_is_loaded_with_every_kind():
    families = load_families()
    assert sorted(families) == FAMILIES
    for family in families.values():
        assert set(family.prompts) == set(KINDS), family.name
        assert family.stop + family.prompts["rag"].stop, f"{family.name} has no stop sequences for answers"


@pytest.mark.parametrize("family", FAMILIES)
def test_stops_belong_to_the_task_summaries_never_stop_at_a_blank_line(family):
    every_task = get_family(family).stop
    for kind in ("summarize", "map", "reduce"):
        assert "\n\n" not in every_task + get_spec(family, kind).stop, f"{family}/{kind} would be cut at its first blank line"
    for kind in ("rag", "condense"):
        assert "\nQuestion:" in get_spec(family, kind).stop, f"{family}/{kind}: a model inventing the next question is stopped"


def test_generic_answers_stop_at_a_blank_line_and_nothing_else_does():
    assert get_family("generic").stop == ()
    assert "\n\n" in get_spec("generic", "rag").stop and "\n\n" in get_spec("generic", "condense").stop


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_each_prompt_renders_with_exactly_its_declared_variables(family, kind):
    spec = get_spec(family, kind)
    values = {name: f"<<{name.upper()}-VALUE>>" for name in spec.variables}
    text = spec.render(**values)
    for value in values.values():
        assert text.count(value) == 1
    assert not re.search(r"(?<!\{)\{[a-z_]+\}(?!\})", text), "a placeholder was left unfilled"
    with pytest.raises(PromptFileError):
        spec.render(**values, extra="x")
    if spec.variables:
        missing = dict(values)
        missing.pop(spec.variables[0])
        with pytest.raises(PromptFileError):
            spec.render(**missing)


def test_declared_variables_match_each_template_or_the_file_is_rejected(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text(
        "family: broken\nstop: ['x']\nprompts:\n  rag:\n    variables: [context]\n    template: '{context} {question}'\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(prompts, "prompts_dir", lambda: tmp_path)
    prompts.load_families.cache_clear()
    try:
        with pytest.raises(PromptFileError, match="question"):
            load_families()
    finally:
        prompts.load_families.cache_clear()


@pytest.mark.parametrize(("alias", "target"), [("rlm/rag-prompt", "generic/rag"), ("rlm/rag-prompt-llama", "llama2/rag")])
def test_hub_names_resolve_offline_without_calling_the_hub(alias, target, monkeypatch, tmp_path):
    import langsmith

    class NoHub:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the hub must not be contacted for a known alias")

    monkeypatch.setattr(langsmith, "Client", NoHub)
    assert get_spec(alias).name == target
    prompt = resolve_prompt(alias, cache_dir=tmp_path)
    assert set(prompt.input_variables) == {"context", "question"}
    assert not (tmp_path / "hub").exists()


def test_llama_alias_has_the_inst_sys_format():
    text = get_spec("rlm/rag-prompt-llama").render(context="C", question="Q")
    assert text.startswith("[INST]<<SYS>>") and "<</SYS>>" in text and text.rstrip().endswith("[/INST]")


def test_unknown_prompt_names_say_what_exists():
    with pytest.raises(PromptNotFound, match="known: chatml"):
        get_spec("nope")
    with pytest.raises(PromptNotFound, match="has no 'essay' prompt"):
        get_spec("chatml/essay")


class FakeHub:
    """Stands in for langsmith.Client: serves one manifest, counts pulls."""

    pulls = 0
    manifest = dumpd(ChatPromptTemplate.from_messages([("human", "Context: {context}\nQuestion: {question}\nAnswer:")]))

    def __init__(self, *args, **kwargs):
        pass

    def pull_prompt_commit(self, name, **kwargs):
        type(self).pulls += 1
        return type("Commit", (), {"manifest": self.manifest})()


def test_hub_pull_only_on_request_and_cached(monkeypatch, tmp_path):
    import langsmith

    FakeHub.pulls = 0
    monkeypatch.setattr(langsmith, "Client", FakeHub)
    first = resolve_prompt("hub:someone/qa", cache_dir=tmp_path)
    second = resolve_prompt("hub:someone/qa", cache_dir=tmp_path)
    assert FakeHub.pulls == 1, "the second use comes from the cache"
    assert set(first.input_variables) == set(second.input_variables) == {"context", "question"}
    assert "Question: Q" in second.invoke({"context": "C", "question": "Q"}).to_string()


def test_hub_pull_failure_is_a_clear_error(monkeypatch, tmp_path):
    import langsmith

    class Offline(FakeHub):
        def pull_prompt_commit(self, name, **kwargs):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(langsmith, "Client", Offline)
    with pytest.raises(HubPullError, match="Are you online"):
        resolve_prompt("hub:someone/qa", cache_dir=tmp_path)


def test_cached_hub_manifest_must_be_a_prompt(tmp_path):
    from langchain_core.documents import Document

    cache = tmp_path / "hub" / "someone__doc.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps(dumpd(Document(page_content="x"))), encoding="utf-8")
    with pytest.raises(HubPullError, match="not a prompt template"):
        resolve_prompt("hub:someone/doc", cache_dir=tmp_path)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_family_detected_from_chat_template(family):
    assert detect_family(TEMPLATES[family], "model.gguf") == family


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("mistral-7b-instruct-v0.2.Q4_K_M.gguf", "llama2"),
        ("llama-2-7b-chat.Q4_0.gguf", "llama2"),
        ("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", "zephyr"),
        ("gemma-2b-it.gguf", "gemma"),
        ("Meta-Llama-3-8B-Instruct.Q4_K_M.gguf", "llama3"),
        ("qwen2-0_5b-instruct-q4_0.gguf", "chatml"),
        ("phi-2.Q4_K_M.gguf", "generic"),
    ],
)
def test_family_detected_from_model_name_when_template_is_silent(name, family):
    assert detect_family(None, name) == family


def test_template_wins_over_name_and_setting_wins_over_both():
    assert detect_family(TEMPLATES["chatml"], "llama-2-7b.gguf") == "chatml"
    assert choose_family("llama2", TEMPLATES["chatml"], "smollm.gguf") == "llama2"
    assert choose_family("rlm/rag-prompt", TEMPLATES["chatml"], "smollm.gguf") == "generic"
    assert choose_family("hub:someone/qa", TEMPLATES["chatml"], "x.gguf") == "chatml", "a hub prompt has no family"
    assert choose_family(None, None, "x.gguf") == "generic"


@pytest.mark.parametrize("family", [name for name in FAMILIES if name != "generic"])
def test_each_chat_family_stops_at_its_end_of_turn_and_next_turn(family):
    stops = get_family(family).stop
    rendered = get_spec(family, "rag").render(context="C", question="Q")
    assert stops[0] in rendered, "the first stop sequence is a turn marker the format itself uses"
    assert "\nQuestion:" not in stops, "the family's stops end every task; this one is for answers only"


@pytest.mark.integration  # reads the real model file
def test_default_model_template_selects_chatml():
    from rag.models import default_llm_path, read_gguf_metadata

    path = default_llm_path()
    assert detect_family(read_gguf_metadata(path).chat_template, path.name) == "chatml"


# --- each family's template through the real model (integration) --------------------------------

CONTEXT = (
    "[1] Kestrel Point Lighthouse\n"
    "Kestrel Point Lighthouse was first lit in 1871. Its keeper, Ada Morrow, kept the light for 32 years."
)
QUESTION = "When was Kestrel Point Lighthouse first lit?"
# Everything a chat format could leak into an answer: every family's markers and stop strings
# (the plain-text stops of the generic family excepted).
MARKERS = sorted(
    {marker for family in load_families().values() for marker in (*family.markers, *family.stop) if "<" in marker or "[" in marker}
    | {"<|im_end|>", "[/INST]", "<</SYS>>", "<<SYS>>", "<end_of_turn>", "<|eot_id|>", "<|end_header_id|>", "<|system|>"}
)


CAP = 128  # a three-sentence answer needs far fewer tokens; reaching the cap means runaway


@pytest.mark.integration
@pytest.mark.parametrize("family", FAMILIES)
def test_family_template_through_the_real_model_stops_without_echoing_markers(family, local_llm):
    """What this shows. SmolLM2 is trained on ChatML only: for chatml it shows the model ends
    its turn by itself with an answer. For the other families the model does not know the
    format, which is the "wrong chat template" situation users report: it shows that the
    family's stop sequences (with the model's end-of-sequence token) end the output before
    max_tokens and that no chat marker reaches the user. It says nothing about answer
    quality. Seen with SmolLM2: under Gemma's format it writes "<end_of_turn>" as text at
    once (an empty answer, cut by the stop); under Llama-3's it invents a passage, then
    writes "<|eot_id|>"; under the generic format it runs on until a blank line."""
    from langchain_core.documents import Document

    from rag.chains import build_docs_qa_chain

    llm = local_llm.llm.model_copy(update={"stop": list(get_family(family).stop), "max_tokens": CAP})
    chain = build_docs_qa_chain(get_spec(family, "rag").to_template(), llm.bind(stop=list(get_spec(family, "rag").stop)))
    doc = Document(page_content=CONTEXT.split("\n", 1)[1], metadata={"title": "Kestrel Point Lighthouse"})
    answer = "".join(chain.stream({"context": [doc], "question": QUESTION}))
    prompt_tokens = local_llm.count_tokens(get_spec(family, "rag").render(context=CONTEXT, question=QUESTION))
    evaluated = llm.client.n_tokens - prompt_tokens  # llama.cpp evaluates every generated token but the last
    assert evaluated < CAP - 1, f"{family}: ran to max_tokens: {answer!r}"
    leaked = [marker for marker in MARKERS if marker in answer]
    assert not leaked, f"{family}: echoed {leaked}: {answer!r}"
    if family == "chatml":  # the model's own format: a real answer
        assert answer.strip(), "empty answer"
