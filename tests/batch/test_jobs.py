"""Job keys (rag.batch.jobs): an unchanged job reuses every record; a changed document, model, prompt or setting redoes what it changes."""

from __future__ import annotations

import pytest

from rag.batch import BatchError, JobSpec, summarize_batch
from rag.llm import LLMIdentity
from rag.settings import Settings
from tests.batch.fakes import TOPICS, fake_local, read_jsonl


def test_a_document_key_is_its_content_under_the_job():
    spec = JobSpec.build(LLMIdentity("m.gguf", "llamacpp", "chatml", 4096, 64), Settings(), None)
    assert spec.document_key("abc") == spec.document_key("abc") != spec.document_key("abd")
    other = JobSpec.build(LLMIdentity("other.gguf", "llamacpp", "chatml", 4096, 64), Settings(), None)
    assert other.document_key("abc") != spec.document_key("abc")


def test_rerun_of_a_finished_job_makes_no_llm_call(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    first = fake_local()
    summarize_batch([corpus], out, batch_settings, local_llm=first)
    before = read_jsonl(out / "summaries.jsonl")

    again = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=again)

    assert again.llm.calls == []
    assert report.status == "done" and report.reused == 3 and report.summarized == 0 and report.rollup is not None
    assert read_jsonl(out / "summaries.jsonl") == before


def test_a_changed_document_is_the_only_one_redone(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    (corpus / "boats.txt").write_text(TOPICS["boats.txt"] + "\n\nIn 2023 the race was cancelled because of fog.", encoding="utf-8")

    local = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=local)

    assert report.summarized == 1 and report.reused == 2
    redone = [prompt for prompt in local.llm.calls if "Solar Boat Race" in prompt and "Kestrel" not in prompt]
    assert len(redone) == 1 and len(local.llm.calls) == 2  # that document, then the rollup


def test_a_copy_of_a_document_reuses_its_summary_under_its_own_name(corpus, tmp_path, batch_settings):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    (corpus / "bakery-copy.md").write_text(TOPICS["bakery.md"], encoding="utf-8")

    local = fake_local()
    report = summarize_batch([corpus], out, batch_settings, local_llm=local)

    copy = next(record for record in report.records if record["source"].endswith("bakery-copy.md"))
    assert report.reused == 4 and len(local.llm.calls) == 1  # only the rollup, which now has four documents
    assert {citation["source"] for citation in copy["citations"]} == {copy["source"]}


@pytest.mark.parametrize(
    "change",
    [
        {"local": {"model": "other-model.gguf"}},
        {"local": {"family": "zephyr"}},
        {"max_words": 40},
        {"settings": {"max_tokens": 32}},
    ],
    ids=["model", "prompt", "max-words", "settings"],
)


def test_a_changed_model_prompt_or_setting_redoes_everything(corpus, tmp_path, batch_settings, change):
    out = tmp_path / "out"
    summarize_batch([corpus], out, batch_settings, local_llm=fake_local())
    settings = batch_settings.with_overrides(**change.get("settings", {}))
    local = fake_local(**change.get("local", {}), max_tokens=settings.max_tokens if "settings" in change else 64)

    report = summarize_batch([corpus], out, settings, local_llm=local, max_words=change.get("max_words"))

    assert report.summarized == 3 and report.reused == 0 and len(local.llm.calls) == 4
    # The earlier records stay: going back to the first setup redoes nothing.
    back = fake_local()
    assert summarize_batch([corpus], out, batch_settings, local_llm=back).reused == 3 and back.llm.calls == []


def test_servers_serving_different_models_are_refused(corpus, tmp_path, batch_settings, fake_server):
    first, second = fake_server(), fake_server(model="another.gguf")
    with pytest.raises(BatchError, match="different models"):
        summarize_batch([corpus], tmp_path / "out", batch_settings, servers=[first.url, second.url])
