# Everything the project needs is installed from here; CI calls `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLUGINS := plugins/catdiff-vision plugins/catdiff-text plugins/catdiff-translate

.PHONY: install data test test-fast demo bench clean

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned here (pyproject declares ranges); pip takes these from local disk
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]' $(addprefix -e ,$(PLUGINS))
	# optional fairseq interop (data-bin reading); its test skips when this fails
	$(BIN)/pip install -q 'fairseq-fixed==0.12.3.1' || echo "make install: fairseq-fixed did not install; the data-bin test will skip"
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

demo: install
	$(BIN)/catdiff run digits --out runs/digits

bench: install
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/ablation.py
	$(BIN)/python benchmarks/steps.py
	$(BIN)/python benchmarks/dropping.py
	$(BIN)/python benchmarks/image_steps.py
	$(BIN)/python benchmarks/text_bpc.py

clean:
	rm -rf $(VENV) runs
