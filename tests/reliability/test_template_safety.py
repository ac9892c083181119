"""Template safety: a GGUF whose chat template is a Jinja code-execution payload runs nothing.

rag reads ``tokenizer.chat_template`` as text and picks the prompt family by looking for
marker strings in it (:func:`rag.prompts.detect_family`); it never renders the template.
Each test here hands rag a copy of the default model whose template would create a marker
file if anything rendered it outside a sandbox, goes through one real path (``rag models``,
``rag doctor``, ``rag ask`` on llama.cpp, a llama.cpp server), and checks that no marker
file appeared. A control test first proves each payload is live: rendered by a plain
``jinja2.Environment``, it does create its file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import EXIT_OK, cli
from rag.models import default_llm_path, model_prompt_family, read_gguf_metadata
from tests.conftest import SAMPLE_DATA, start_llama_server

pytestmark = pytest.mark.integration

QUESTION = "When was Kestrel Point Lighthouse first lit?"
TEMPLATE_KEY = b"tokenizer.chat_template"
GGUF_STRING = 8  # the GGUF value type of a string


def globals_payload(marker: Path) -> str:
    """Reaches ``os`` through a Jinja global's function globals and runs a shell command."""
    return f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}"


def subclasses_payload(marker: Path) -> str:
    """Finds ``subprocess.Popen`` among ``object``'s subclasses and runs it.

    The chatml marker sits in a Jinja comment: found in the text, gone once rendered.
    """
    return (
        "{# <|im_start|> #}{% for c in ''.__class__.__mro__[1].__subclasses__() if c.__name__ == 'Popen' %}"
        f"{{{{ c(['touch', '{marker}']).wait() }}}}{{% endfor %}}"
    )


# payload name: (template builder, the family rag detects from the template's text)
PAYLOADS = {"globals": (globals_payload, "generic"), "subclasses": (subclasses_payload, "chatml")}


@dataclass(frozen=True)
class HostileModel:
    """A copy of the default model with a payload as its chat template, and the file the payload would create."""

    name: str
    path: Path
    marker: Path
    family: str

    def assert_nothing_ran(self) -> None:
        assert not self.marker.exists(), f"the {self.name} chat template payload RAN: {self.marker} was created"


def copy_with_chat_template(source: Path, target: Path, template: str) -> None:
    """Copy a GGUF with ``template`` as its chat template, padded with spaces to the original's length.

    The same length keeps every offset after it valid, so the copy is a file copy and one
    in-place write (gguf's ``gguf_new_metadata`` script re-parses the whole vocabulary: 15 s).
    """
    needle = struct.pack("<Q", len(TEMPLATE_KEY)) + TEMPLATE_KEY + struct.pack("<I", GGUF_STRING)
    with source.open("rb") as handle:
        header = handle.read(8 << 20)
    start = header.index(needle) + len(needle)
    assert header.find(needle, start) == -1, "the chat template key must occur once"
    (length,) = struct.unpack_from("<Q", header, start)
    encoded = template.encode("utf-8")
    assert len(encoded) <= length, f"payload of {len(encoded)} bytes does not fit the {length}-byte template"
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:
        handle.seek(start + 8)
        handle.write(encoded.ljust(length, b" "))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("template-safety")


@pytest.fixture(scope="module")
def hostile_models(folder) -> list[HostileModel]:
    """One model copy per payload, in ``folder/models`` (no name hint: the family comes from the template)."""
    (folder / "models").mkdir()
    models = []
    for name, (payload, family) in PAYLOADS.items():
        model = HostileModel(name, folder / "models" / f"hostile-{name}.gguf", folder / f"RAN-{name}", family)
        copy_with_chat_template(default_llm_path(), model.path, payload(model.marker))
        assert read_gguf_metadata(model.path).chat_template.rstrip() == payload(model.marker)
        models.append(model)
    return models


@pytest.fixture(scope="module")
def store_env(folder, hostile_models, embeddings) -> dict[str, str]:
    """Environment of a ``rag`` process whose store holds data/, and whose models folder holds the copies."""
    from rag.indexing import ingest
    from rag.settings import Settings

    ingest([str(SAMPLE_DATA)], Settings(data_dir=folder / "rag-data"), embeddings)
    return {**os.environ, "RAG_DATA_DIR": str(folder / "rag-data"), "RAG_MODELS_DIR": str(folder / "models"), "RAG_MAX_TOKENS": "16", "RAG_N_THREADS": "1"}


@pytest.fixture
def nothing_runs(hostile_models):
    """After the test, no payload has created its marker file."""
    yield hostile_models
    for model in hostile_models:
        model.assert_nothing_ran()


def test_each_payload_runs_when_rendered_without_a_sandbox(tmp_path):
    from jinja2 import Environment

    for name, (payload, _family) in PAYLOADS.items():
        control = tmp_path / f"control-{name}"
        Environment().from_string(payload(control)).render(messages=[])
        assert control.exists(), f"the {name} payload is not live: the tests below would prove nothing"


def test_models_and_doctor_read_the_template_as_text(nothing_runs, store_env, monkeypatch):
    for name, value in store_env.items():
        if name.startswith("RAG_"):
            monkeypatch.setenv(name, value)
    listed = CliRunner().invoke(cli, ["models", "--json"], catch_exceptions=False)
    assert listed.exit_code == EXIT_OK, listed.output
    formats = {Path(model["path"]).name: model["chat_format"] for model in json.loads(listed.stdout)}
    for model in nothing_runs:
        assert formats[model.path.name] == model.family == model_prompt_family(model.path)
        doctor = CliRunner().invoke(cli, ["doctor", "--model", str(model.path), "--json"], catch_exceptions=False)
        assert doctor.exit_code == EXIT_OK, doctor.output
        check = next(check for check in json.loads(doctor.stdout) if check["name"] == "llm model")
        assert check["ok"] and check["detail"].endswith(f"prompt family {model.family})"), check


def test_ask_in_a_real_process_answers_with_the_generic_family(nothing_runs, store_env):
    model = next(model for model in nothing_runs if model.family == "generic")
    proc = subprocess.run(
        [sys.executable, "-m", "rag", "ask", QUESTION, "--model", str(model.path), "--json"],
        capture_output=True, text=True, env=store_env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == EXIT_OK and "Traceback" not in proc.stderr, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["prompt"] == "generic/rag" and answer["model"] == model.path.name
    assert answer["answer"] and answer["sources"]


def test_llama_cpp_loads_each_model_and_its_chat_formatter_refuses_the_payload(nothing_runs, settings):
    """rag's llama.cpp backend loads each model (llama-cpp-python compiles the template, in its sandbox).

    Should a future path render the template through llama-cpp-python, the sandbox refuses.
    """
    from jinja2.exceptions import SecurityError

    from rag.llm import load_local_llm

    for model in nothing_runs:
        local = load_local_llm(settings.with_overrides(llm_model=str(model.path), n_ctx=512, max_tokens=4, n_threads=1))
        assert local.family == model.family
        with pytest.raises(SecurityError):
            local.llm.client.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=4)


def test_llama_server_refuses_the_template_and_the_llamafile_backend_reads_it_as_text(nothing_runs, store_env, embeddings):
    """llama-server renders templates itself (C++, no Python objects): it will not start with these.

    With ``--no-jinja`` it starts, and rag's llamafile backend reads the template from
    ``/props`` and answers over ``/completion``.
    """
    from rag.answer import Assistant
    from rag.server import ServerStartError
    from rag.settings import Settings

    model = next(model for model in nothing_runs if model.family == "chatml")
    with pytest.raises(ServerStartError):
        start_llama_server(model.path, n_ctx=512, threads=1)
    server = start_llama_server(model.path, n_ctx=1024, threads=1, extra=["--no-jinja"])
    try:
        settings = Settings(data_dir=Path(store_env["RAG_DATA_DIR"]), backend="llamafile", llamafile_url=server.url, max_tokens=16, n_threads=1)
        answer = Assistant(settings, embeddings=embeddings).ask(QUESTION)
    finally:
        server.stop()
    assert answer.prompt == f"{model.family}/rag" and answer.metadata["backend"] == "llamafile"
    assert answer.answer and answer.sources
