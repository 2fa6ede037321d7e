# One entry point per job. `make run` and `make test` set up .venv/ themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# KServe's release, for the cluster (kind-up) and for the storage initializer `make test` replays:
# the `kserve-storage` package of the same release, in its own venv (its pins are not ours).
KSERVE_VERSION ?= v0.20.0
STORAGE_VENV := $(VENV)/kserve-storage-$(KSERVE_VERSION)
STORAGE_STAMP := $(STORAGE_VENV)/.installed
# KServe's sklearn runtime as the cluster runs it (tests/integration/kserve_runtime): the `kserve`
# package of the same release with the scikit-learn kserve-sklearnserver pins (kserve@v0.20.0
# python/sklearnserver/pyproject.toml: scikit-learn~=1.5.1, joblib>=1.4,<2, pandas>=2.2,<3).
RUNTIME_VENV := $(VENV)/kserve-runtime-$(KSERVE_VERSION)
RUNTIME_STAMP := $(RUNTIME_VENV)/.installed
RUNTIME_SKLEARN ?= 1.5.2

# The web form's browser test (tests/integration/test_web_form_browser.py) drives a headless
# Chromium: Debian's `chromium`, else a Chrome already on PATH (GitHub's runners have one).
CHROMIUM ?= $(or $(shell command -v chromium 2>/dev/null),$(shell command -v google-chrome 2>/dev/null),/usr/bin/chromium)
BROWSER_STAMP := $(VENV)/.browser

.PHONY: setup run serve test lint compile lock clean browser

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing the project (pinned by constraints.txt)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project

run: $(STAMP) ## run the pipeline locally (kfp.local) and deploy to the local InferenceService
	$(BIN)/mlops run $(ARGS)

serve: $(STAMP) ## serve the local InferenceService on :8080 (foreground)
	$(BIN)/mlops serve $(ARGS)

$(STORAGE_STAMP):
	@echo "==> installing kserve-storage $(KSERVE_VERSION:v%=%) (KServe's storage initializer) into $(STORAGE_VENV)"
	@test -x $(STORAGE_VENV)/bin/python || $(PYTHON) -m venv $(STORAGE_VENV)
	@$(STORAGE_VENV)/bin/python -m pip install -q "kserve-storage==$(KSERVE_VERSION:v%=%)"
	@touch $(STORAGE_STAMP)

$(RUNTIME_STAMP):
	@echo "==> installing kserve $(KSERVE_VERSION:v%=%) + scikit-learn $(RUNTIME_SKLEARN) (KServe's sklearn runtime) into $(RUNTIME_VENV)"
	@test -x $(RUNTIME_VENV)/bin/python || $(PYTHON) -m venv $(RUNTIME_VENV)
	@$(RUNTIME_VENV)/bin/python -m pip install -q "kserve==$(KSERVE_VERSION:v%=%)" \
		"kserve-storage==$(KSERVE_VERSION:v%=%)" "scikit-learn==$(RUNTIME_SKLEARN)" \
		"joblib>=1.4,<2" "pandas>=2.2,<3"
	@touch $(RUNTIME_STAMP)

# Installs chromium with apt-get when it is missing and we are root; otherwise says the command.
$(BROWSER_STAMP): | $(STAMP)
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "==> installing chromium (apt-get) for the web form's browser test"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "error: the web form's browser test needs chromium, and $(CHROMIUM) is missing:" \
				"install it with 'sudo apt-get install -y chromium' (or pass CHROMIUM=/path/to/chrome)" >&2; \
			exit 1; \
		fi; \
	fi
	@touch $@

browser: $(BROWSER_STAMP) ## install chromium for the web form's browser test (apt-get, as root)

# -m "not e2e": `make test` never talks to a cluster, even when the kube-context reaches one.
test: $(STAMP) $(STORAGE_STAMP) $(RUNTIME_STAMP) $(BROWSER_STAMP) ## unit, local integration, browser, offline cluster checks and the cluster replays (no e2e)
	MLOPS_KSERVE_STORAGE_PYTHON=$(abspath $(STORAGE_VENV))/bin/python MLOPS_KSERVE_RUNTIME_PYTHON=$(abspath $(RUNTIME_VENV))/bin/python MLOPS_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -m "not e2e" $(ARGS)

# zizmor: GitHub Actions' static analyser (unpinned actions, persisted credentials, template
# injection...), --offline: no GitHub API calls, so it runs the same on a laptop.
lint: $(STAMP) ## ruff, mypy and zizmor (the workflows)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check mlops components pipelines serving
	$(BIN)/mypy
	$(BIN)/zizmor --offline .github/workflows

compile: $(STAMP) ## rewrite pipelines/compiled/training_pipeline.yaml
	$(BIN)/mlops compile

lock: $(STAMP) ## refresh constraints.txt from the installed set
	@$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.new
	@{ head -2 constraints.txt; cat constraints.new; } > constraints.txt && rm constraints.new

clean: ## remove local state (.mlops/) but keep .venv/
	rm -rf .mlops local_outputs

# ---------------------------------------------------------------------------------------------
# The cluster path: kind + Kubeflow Pipelines + KServe (Knative mode) + MinIO + MLflow.
# Needs Docker, kind and kubectl on PATH (plus curl and git). Every pin below is documented in
# README.md ("The cluster path", pinned versions with their sources).
# ---------------------------------------------------------------------------------------------
.PHONY: kind-up image submit e2e kind-down

CLUSTER ?= mlops
KIND ?= kind
DOCKER ?= docker
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(BIN)/kubectl)
IMAGE ?= localhost/kfp-kserve-sklearn:0.1.0
OVERLAY ?= dev
MODEL_NAMESPACE ?= kubeflow-user
# KServe's Knative-mode installer (cert-manager, Istio, Knative Operator + Serving, KServe and its
# ClusterServingRuntimes) as attached to the release; the same file is in the repository at
# install/$(KSERVE_VERSION)/ of the tag, the fallback. (KSERVE_VERSION is set at the top.)
KSERVE_INSTALLER ?= https://github.com/kserve/kserve/releases/download/$(KSERVE_VERSION)/kserve-knative-mode-full-install-with-manifests.sh
KSERVE_INSTALLER_AT_TAG ?= https://raw.githubusercontent.com/kserve/kserve/$(KSERVE_VERSION)/install/$(KSERVE_VERSION)/kserve-knative-mode-full-install-with-manifests.sh
# The KFP backend release that matches the kfp SDK pinned in pyproject.toml (2.17).
PIPELINE_VERSION ?= 2.17.0
KFP_MANIFESTS := github.com/kubeflow/pipelines/manifests/kustomize
KFP_PORT ?= 8888
# Istio with minimal requests, as KServe's own CI installs it (kserve v0.20.0
# test/scripts/gh-actions/setup-deps.sh); the installer passes these to `helm install istiod`
# and `helm install istio-ingressgateway`. The chart defaults ask istiod alone for 500m / 2Gi.
ISTIOD_EXTRA_ARGS ?= --set resources.requests.cpu=5m --set resources.requests.memory=32Mi
ISTIO_GATEWAY_EXTRA_ARGS ?= --set resources.requests.cpu=5m --set resources.requests.memory=32Mi --set resources.limits.cpu=100m --set resources.limits.memory=128Mi
INGRESS_NODE_PORT := 31080

kind-up: ## create the kind cluster; install KServe (Knative mode), KFP, then manifests/overlays/$(OVERLAY)
	@echo "==> [1/5] kind cluster '$(CLUSTER)' from kind-config.yaml"
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(CLUSTER)'; then \
		echo "    cluster '$(CLUSTER)' exists; reusing it"; \
	else \
		$(KIND) create cluster --name $(CLUSTER) --config kind-config.yaml --wait 180s; \
	fi
	$(KUBECTL) cluster-info --context kind-$(CLUSTER)
	@echo "==> [2/5] KServe $(KSERVE_VERSION) in Knative mode with its installer: cert-manager, Istio, Knative Serving, KServe (about 8 minutes)"
	@set -euo pipefail; tmp=$$(mktemp -d); \
		curl -fsSL "$(KSERVE_INSTALLER)" -o "$$tmp/install.sh" \
			|| curl -fsSL "$(KSERVE_INSTALLER_AT_TAG)" -o "$$tmp/install.sh"; \
		cd "$$tmp" && ISTIOD_EXTRA_ARGS="$(ISTIOD_EXTRA_ARGS)" \
			ISTIO_GATEWAY_EXTRA_ARGS="$(ISTIO_GATEWAY_EXTRA_ARGS)" bash ./install.sh
	$(KUBECTL) wait --for=condition=Available deployment/kserve-controller-manager -n kserve --timeout=300s
	$(KUBECTL) wait --for=condition=Ready pod -l app=istio-ingressgateway -n istio-system --timeout=300s
	@echo "==> pinning the Istio ingress gateway's HTTP port to NodePort $(INGRESS_NODE_PORT) (kind-config.yaml maps it to localhost:8081)"
	$(KUBECTL) patch service istio-ingressgateway -n istio-system \
		-p '{"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":$(INGRESS_NODE_PORT)}]}}'
	@echo "==> [3/5] Kubeflow Pipelines $(PIPELINE_VERSION), standalone (about 5 minutes)"
	$(KUBECTL) apply -k "$(KFP_MANIFESTS)/cluster-scoped-resources?ref=$(PIPELINE_VERSION)"
	$(KUBECTL) wait --for condition=established --timeout=60s crd/applications.app.k8s.io
	$(KUBECTL) apply -k "$(KFP_MANIFESTS)/env/platform-agnostic?ref=$(PIPELINE_VERSION)"
	$(KUBECTL) wait --for=condition=Available deployment --all -n kubeflow --timeout=900s
	@echo "==> [4/5] model store, MLflow, storage Secret and RBAC: manifests/overlays/$(OVERLAY)"
	$(KUBECTL) apply -k manifests/overlays/$(OVERLAY)
	$(KUBECTL) wait --for=condition=Available deployment/minio deployment/mlflow -n $(MODEL_NAMESPACE) --timeout=600s
	$(KUBECTL) wait --for=condition=Complete job/create-buckets -n $(MODEL_NAMESPACE) --timeout=300s
	@echo "==> [5/5] ready: KFP UI: kubectl port-forward -n kubeflow svc/ml-pipeline-ui $(KFP_PORT):80; then 'make image submit'"

# The Deployments of manifests/ that run the project image: their pods keep the image they
# started with (same tag, imagePullPolicy IfNotPresent), so `make image` restarts them.
IMAGE_DEPLOYMENTS := mlops-payload-sink web-form

# --provenance=false: no attestation manifest, so the image is one platform's manifest, which
# `kind load docker-image` handles under Docker's containerd image store (kubernetes-sigs/kind
# #3795, #4066). If the load still fails, `docker save` + `kind load image-archive` does it.
image: ## build the project image, load it into kind, restart the sink and web form on it
	@echo "==> building $(IMAGE) from Dockerfile"
	$(DOCKER) build --provenance=false -t $(IMAGE) .
	@echo "==> loading $(IMAGE) into kind cluster '$(CLUSTER)'"
	@set -euo pipefail; \
		if ! $(KIND) load docker-image $(IMAGE) --name $(CLUSTER); then \
			echo "    kind load docker-image failed; loading through docker save + kind load image-archive"; \
			tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
			$(DOCKER) save -o "$$tmp/image.tar" $(IMAGE); \
			$(KIND) load image-archive "$$tmp/image.tar" --name $(CLUSTER); \
		fi
	@echo "==> restarting what runs $(IMAGE) in $(MODEL_NAMESPACE) (the payload sink, the web form) and waiting"
	@set -euo pipefail; \
		for deployment in $(IMAGE_DEPLOYMENTS); do \
			if ! $(KUBECTL) get deployment "$$deployment" -n $(MODEL_NAMESPACE) -o name >/dev/null 2>&1; then \
				echo "    no deployment/$$deployment in $(MODEL_NAMESPACE) yet: make kind-up applies it"; \
				continue; \
			fi; \
			$(KUBECTL) rollout restart "deployment/$$deployment" -n $(MODEL_NAMESPACE); \
			$(KUBECTL) rollout status "deployment/$$deployment" -n $(MODEL_NAMESPACE) --timeout=300s; \
		done

submit: $(STAMP) ## compile the pipeline, run it on KFP (port-forward to ml-pipeline-ui) and wait
	@echo "==> compiling the pipeline to pipelines/compiled/training_pipeline.yaml"
	$(BIN)/mlops compile
	@echo "==> port-forwarding svc/ml-pipeline-ui to localhost:$(KFP_PORT), submitting the run and waiting for it"
	@set -euo pipefail; \
		$(KUBECTL) port-forward -n kubeflow svc/ml-pipeline-ui $(KFP_PORT):80 >/dev/null 2>&1 & pf=$$!; \
		trap 'kill $$pf 2>/dev/null || true' EXIT; \
		for _ in $$(seq 30); do curl -fs -o /dev/null http://localhost:$(KFP_PORT)/apis/v2beta1/healthz && break; sleep 2; done; \
		$(BIN)/mlops submit --host http://localhost:$(KFP_PORT) --namespace $(MODEL_NAMESPACE) $(ARGS)
	$(KUBECTL) get inferenceservices -n $(MODEL_NAMESPACE)

# MLOPS_E2E_REQUIRED=1: a missing cluster or component fails the tests (a plain pytest skips).
e2e: $(STAMP) ## end-to-end tests against the kind cluster (pytest -m e2e); fails without one
	@echo "==> e2e tests against kind cluster '$(CLUSTER)' (namespace $(MODEL_NAMESPACE))"
	MLOPS_E2E_REQUIRED=1 MLOPS_E2E_NAMESPACE=$(MODEL_NAMESPACE) MLOPS_E2E_KUBECTL=$(KUBECTL) \
		$(BIN)/pytest -m e2e tests/e2e $(ARGS)

kind-down: ## delete the kind cluster
	@echo "==> deleting kind cluster '$(CLUSTER)'"
	$(KIND) delete cluster --name $(CLUSTER)
