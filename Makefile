# flannel-guard: `make run` serves the webhook on 127.0.0.1:8443 (standalone, self-signed),
# `make test` runs the whole suite. Both set up everything themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CLUSTER_CIDR ?= 10.244.0.0/16
PORT   ?= 8443

.PHONY: all venv run demo release test lint certs bench bench-claims bench-parse bench-match bench-decompose soak clean

all: test

RUN_STAMP := $(VENV)/.runtime-stamp

# `make run` needs the runtime dependencies only; `make test` (and `make demo`, which serves the
# test suite's emulated API) add the test extra on top. pip shows its progress: the first run
# downloads about 40 MB.
$(RUN_STAMP): pyproject.toml constraints.txt
	@echo "==> installing flannel-guard and its runtime dependencies into $(VENV) (once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -c constraints.txt -e .
	touch $@

$(STAMP): $(RUN_STAMP)
	@echo "==> installing the test dependencies into $(VENV) (once)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -c constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

certs: $(RUN_STAMP)
	$(BIN)/flannel-guard certs --dev --out certs

# flannel-guard doctor, text and HTML, on an emulated API holding a broken cluster (no cluster needed).
demo: $(STAMP)
	$(BIN)/python examples/demo_cluster.py --out build/demo

run: certs
	@echo ""
	@echo "flannel-guard on https://127.0.0.1:$(PORT) (standalone, cluster-cidr $(CLUSTER_CIDR))"
	@echo "  curl --cacert certs/ca.crt https://127.0.0.1:$(PORT)/healthz"
	@echo "  curl --cacert certs/ca.crt -H 'Content-Type: application/json' \\"
	@echo "       --data @examples/review-configmap-wrong-network.json https://127.0.0.1:$(PORT)/validate"
	@echo "  curl --cacert certs/ca.crt -H 'Content-Type: application/json' \\"
	@echo "       --data @examples/review-node-create.json https://127.0.0.1:$(PORT)/mutate \\"
	@echo "       | jq -r .response.patch | base64 -d"
	@echo ""
	$(BIN)/flannel-guard serve --standalone --cluster-cidr $(CLUSTER_CIDR) --port $(PORT) \
		--tls-cert certs/tls.crt --tls-key certs/tls.key

# dist/: install.yaml (+ the cert-manager variant), the packaged chart, the image archive when
# `make image` wrote it, SHA256SUMS (release/make_dist.py says what each is for).
release: $(STAMP) tools
	$(BIN)/python release/make_dist.py --dist dist

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) tools debs
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) tools build dist *.egg-info .pytest_cache .ruff_cache .hypothesis

include tools.mk
include system.mk
include image.mk

# Benchmarks and the soak run are measured, not asserted: not part of `make test`.
# The servers under `make bench` run in a venv with the runtime dependencies only, as in the
# image (the test extra's packages would be imported by the kubernetes client and structlog).
RUNTIME       := build/runtime
RUNTIME_STAMP := $(RUNTIME)/.installed-stamp

$(RUNTIME_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(RUNTIME)
	$(RUNTIME)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

bench: $(STAMP) $(RUNTIME_STAMP)
	$(BIN)/python bench/run.py --server-python $(RUNTIME)/bin/python
	$(BIN)/python bench/match_calls.py

bench-claims: $(STAMP)
	$(BIN)/python bench/claims.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py

bench-parse: $(STAMP)
	$(BIN)/python bench/parse_cost.py

bench-decompose: $(STAMP) $(RUNTIME_STAMP)
	$(BIN)/python bench/decompose.py --server-python $(RUNTIME)/bin/python

bench-match: $(STAMP)
	$(BIN)/python bench/match_calls.py

# Issue 26: a join storm of 1,000 Nodes on one, two and three replicas, and one while none answered.
.PHONY: bench-storm
bench-storm: $(STAMP)
	$(BIN)/python bench/storm.py
