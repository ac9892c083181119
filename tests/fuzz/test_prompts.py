"""Fuzzing the prompt registry (rag.prompts): any prompt file loads or fails naming itself; user text is inserted verbatim."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from rag import prompts
from rag.prompts import PromptFileError, get_spec, load_families

# What a question or a retrieved passage may hold: template syntax of every kind, chat markers, anything.
user_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["{context}", "{question}", "{{", "}}", "{{ 7*7 }}", "{% for x in range(9) %}", "{0}", "{}", "{question.__class__}",
                              "[INST]", "[/INST]", "<|im_end|>", "<s>", "${x}", "%s", "%(question)s", "\\", "\n"]), max_size=12).map("".join),
)  # fmt: skip

_REAL_PROMPTS = [(family.name, kind) for family in load_families().values() for kind in family.prompts]


@given(values=st.fixed_dictionaries({}, optional={name: user_text for name in ("context", "question", "docs", "history")}), which=st.sampled_from(_REAL_PROMPTS))
@example(values={"question": "{{ 7*7 }} {% import os %}", "context": "{question}"}, which=("chatml", "rag"))
def test_registry_prompts_insert_user_text_verbatim(values, which):
    spec = get_spec(*which)
    wanted = {name: values.get(name, "") for name in spec.variables}
    rendered = spec.render(**wanted)
    placeholders = {name: f"\ue000{number}\ue001" for number, name in enumerate(spec.variables)}
    expected = spec.render(**placeholders)
    for name, placeholder in placeholders.items():
        expected = expected.replace(placeholder, wanted[name])
    assert rendered == expected, "each value appears exactly as given, nothing in it is evaluated"
    assert spec.to_template().format(**wanted) == rendered


template_piece = st.sampled_from(
    ["{context}", "{question}", "{docs}", "{{", "}}", "{{ 7*7 }}", "{% if x %}", "[INST]", "{question.__class__}", "{0}", "{}",
     "{question!r}", "{question:>10}", "{question[0]}", "{", "}", "text ", "\n"]
) | st.text(max_size=8)  # fmt: skip
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))
strings = st.lists(st.text(max_size=8), max_size=3) | scalar
spec = st.fixed_dictionaries(
    {},
    optional={
        "variables": st.lists(st.sampled_from(["context", "question", "docs", "0", "", "question.__class__", "a b"]), max_size=3) | scalar,
        "template": st.lists(template_piece, max_size=8).map("".join) | scalar,
        "stop": strings,
    },
)
prompt_file = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "family": st.sampled_from(["fuzz", "a/b", ""]) | scalar,
            "description": scalar,
            "markers": strings,
            "name_hints": strings,
            "stop": strings,
            "prompts": st.dictionaries(st.sampled_from(["rag", "summarize", "condense"]) | scalar, spec | scalar, max_size=3) | scalar | st.lists(scalar, max_size=2),
        },
    ),
    scalar,
    st.lists(scalar, max_size=3),
)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _load(folder: Path, raw: bytes) -> dict:
    path = folder / "fuzz.yaml"
    path.write_bytes(raw)
    load_families.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prompts, "prompts_dir", lambda: folder)
        try:
            return load_families()
        except PromptFileError as error:
            assert str(path) in str(error), "the error names the file"
            return {}
        finally:
            load_families.cache_clear()


def _check_family_renders(families: dict, values: list[str]) -> None:
    for family in families.values():
        assert isinstance(family.name, str) and family.name
        assert all(isinstance(item, str) for item in (*family.markers, *family.name_hints, *family.stop))
        for spec in family.prompts.values():
            assert all(isinstance(item, str) for item in spec.stop)
            wanted = dict(zip(spec.variables, values * len(spec.variables)))
            rendered = spec.render(**wanted)
            assert all(value in rendered for value in wanted.values()), "each value appears verbatim"


@given(data=prompt_file, values=st.lists(user_text, min_size=1, max_size=3))
@example(data={"family": "f", "prompts": ["rag"]}, values=["x"])  # a list of prompts: AttributeError
@example(data={"family": "f", "prompts": {"rag": {"variables": [], "template": "{"}}}, values=["x"])  # ValueError from the template
@example(data={"family": "f", "markers": 5, "prompts": {}}, values=["x"])  # tuple(5): TypeError outside the checks
@example(data={"family": "f", "stop": "</s>", "prompts": {}}, values=["x"])  # a string stop became the stops "<", "/", "s", ">"
@example(data={"family": "f", "prompts": {"rag": {"variables": ["0"], "template": "{0}"}}}, values=["x"])  # a positional field
def test_generated_prompt_files_load_or_fail_naming_the_file(folder, data, values):
    families = _load(folder, yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8"))
    _check_family_renders(families, values)
    for family in families.values():
        for field in ("markers", "name_hints", "stop"):
            given_value = data.get(field)
            assert getattr(family, field) == ((given_value,) if isinstance(given_value, str) else tuple(given_value or ())), field


@given(text=st.text(max_size=300))
@example(text="family: f\nprompts: {rag: {variables: [question], template: '{question'}}\n")
@example(text="family: [unclosed\n")  # not YAML: yaml.YAMLError
@example(text="[" * 1200)
def test_any_prompt_file_text_loads_or_fails_naming_the_file(folder, text):
    _check_family_renders(_load(folder, text.encode("utf-8")), ["x"])


@given(raw=st.binary(max_size=100))
@example(raw=b"family: caf\xe9\n")  # not UTF-8
def test_any_prompt_file_bytes_load_or_fail_naming_the_file(folder, raw):
    _check_family_renders(_load(folder, raw), ["x"])
