# Everything the project needs is installed from here; CI (.ci/run) calls `make test` and
# `make test-interop`. `make install` compiles nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
INTEROP_STAMP := $(VENV)/.installed-interop
PLUGINS := plugins/catdiff-vision plugins/catdiff-text plugins/catdiff-translate plugins/catdiff-tokens
# torch is pinned here (pyproject declares ranges); pip takes these from local disk
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: install data test test-fast test-interop demo bench bench-quick docs clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

install: $(STAMP)

# Offline Debian data sets used by the embedded tasks; skipped without root/apt.
DEBIAN_DATA := dataset-fashion-mnist sword-comm-tdavid trans-de-en
data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s $(DEBIAN_DATA) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(DEBIAN_DATA); } || \
	  echo "make data: apt-get failed; tests that need these data sets will be skipped"; \
	else echo "make data: not root or no apt-get; tests that need Debian data sets will be skipped"; fi

test: install data
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Real fairseq (the translate plugin's `fairseq` extra, a C++ build of fairseq-fixed==0.12.3.1)
# as the oracle of the native data-bin reader. It is the oracle: a failed install fails here.
$(INTEROP_STAMP): $(STAMP)
	$(BIN)/pip install -q $(TORCH) -e 'plugins/catdiff-translate[fairseq]' || \
	  { echo "make test-interop: the fairseq extra (fairseq-fixed==0.12.3.1) did not install" >&2; exit 1; }
	$(BIN)/python -c "import fairseq.data.indexed_dataset" || \
	  { echo "make test-interop: fairseq installed but does not import" >&2; exit 1; }
	touch $@

test-interop: $(INTEROP_STAMP)
	$(BIN)/python -m pytest -q -m interop

demo: install
	$(BIN)/catdiff run digits --out runs/digits

# Every benchmark (`python -m benchmarks` lists them), at its defaults; the trained digits models
# are kept in runs/bench-models and shared (ablation's CATDM is steps' and dropping's). Roughly 9
# hours on one thread of a shared 2-core VM, from the wall times in docs/results.md and docs/notes.md (compare's
# two tasks x two modes x 3 seeds ~3.5 h, ablation ~1 h, text_bpc ~45 min, steps, dropping and
# defaults ~30 min each, image_steps ~20 min, the rest minutes). bench-quick: each one's --quick
# run, the smallest that goes through its whole path (a few minutes in all; speed's is the longest).
BENCHMARKS := speed ablation ablation_digits steps dropping compare defaults sampler_sweep image_steps text_bpc
MODELS := --models runs/bench-models
SHARE_MODELS := ablation ablation_digits steps dropping
bench: install
	$(foreach b,$(BENCHMARKS),$(BIN)/python -m benchmarks.$(b) $(if $(filter $(SHARE_MODELS),$(b)),$(MODELS)) &&) true

bench-quick: install
	$(foreach b,$(BENCHMARKS),$(BIN)/python -m benchmarks.$(b) --quick --threads 1 &&) true

# The documentation site (mkdocs.yml; docs/*.md read as they are on GitHub). --strict fails on
# broken links, anchors and pages; the site is written outside the repository.
DOCS_SITE ?= /tmp/catdiff-site
docs: install
	$(BIN)/python -c "import mkdocs" 2>/dev/null || $(BIN)/pip install -q mkdocs
	$(BIN)/python -m catdiff.docgen --check
	$(BIN)/mkdocs build --strict -d $(DOCS_SITE)

clean:
	rm -rf $(VENV) runs
