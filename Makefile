# berth: build, local cluster, tests. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

K8S_VERSION   := v1.37.2
CACHE         ?= $(HOME)/.cache/berth
# The binary is keyed by the Kubernetes version and a hash of the harness
# sources, so a changed harness rebuilds and a warm machine reuses it.
HARNESS_HASH  := $(shell cat e2e/cluster/go.mod e2e/cluster/go.sum e2e/cluster/*.go | sha256sum | cut -c1-12)
K8S_DIR       := $(CACHE)/k8s-$(K8S_VERSION)-$(HARNESS_HASH)
BERTH_K8S     := $(K8S_DIR)/berth-k8s
E2E_STATE     := $(CURDIR)/target/e2e
KUBECONFIG_LOCAL := $(E2E_STATE)/kubeconfig
NODES         ?= 3
# kwok (sigs.k8s.io/kwok): the node simulator of the bench's scale search,
# thousands of nodes in one light process; built from its Go module.
KWOK_VERSION  := v0.8.0
KWOK_DIR      := $(CACHE)/kwok-$(KWOK_VERSION)
BERTH_KWOK    := $(KWOK_DIR)/kwok
export BERTH_K8S E2E_STATE BERTH_KWOK

K8S_LDFLAGS := -s -w \
  -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
  -X k8s.io/component-base/version.gitTreeState=clean \
  -X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION)

.PHONY: help
help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install the Debian packages the build and the local cluster need
	@missing=""; for p in openssl curl containerd runc busybox-static containernetworking-plugins protobuf-compiler; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

.PHONY: k8s-bin
k8s-bin: $(BERTH_K8S) ## build etcd, kube-apiserver, controller-manager, scheduler, hollow nodes, kubectl
$(BERTH_K8S):
	@echo "building Kubernetes $(K8S_VERSION) components into $(K8S_DIR) (cold: ~15 min on 2 cores)"
	@mkdir -p $(K8S_DIR)
	cd e2e/cluster && time go build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(BERTH_K8S).tmp .
	@mv $(BERTH_K8S).tmp $(BERTH_K8S)
	@# Older builds of the harness are 200 MB each: keep only this one.
	@find $(CACHE) -maxdepth 1 -name 'k8s-*' ! -path '$(K8S_DIR)' -exec rm -rf {} +

# Helm, built from its Go module (e2e/helm, pinned in its go.mod), cached like
# the harness; older builds are removed.
HELM_VERSION  := $(shell awk '$$1 == "helm.sh/helm/v3" {print $$2}' e2e/helm/go.mod)
HELM_DIR      := $(CACHE)/helm-$(HELM_VERSION)-$(shell cat e2e/helm/go.mod e2e/helm/go.sum | sha256sum | cut -c1-12)
BERTH_HELM    := $(HELM_DIR)/helm
export BERTH_HELM

.PHONY: helm-bin
helm-bin: $(BERTH_HELM) ## build the helm command from its Go module
$(BERTH_HELM):
	@echo "building helm $(HELM_VERSION) into $(HELM_DIR)"
	@mkdir -p $(HELM_DIR)
	cd e2e/helm && time go build -trimpath \
	  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION)" \
	  -o $(BERTH_HELM).tmp helm.sh/helm/v3/cmd/helm
	@mv $(BERTH_HELM).tmp $(BERTH_HELM)
	@find $(CACHE) -maxdepth 1 -name 'helm-*' ! -path '$(HELM_DIR)' -exec rm -rf {} +

.PHONY: chart-sync
chart-sync: ## copy crds/ and config/rbac into the Helm chart and config/crd (one source each)
	cp crds/*.yaml charts/berth/crds/
	cp crds/*.yaml config/crd/
	cp config/rbac/manager.yaml config/rbac/node-agent.yaml charts/berth/files/rbac/

.PHONY: chart-check
chart-check: $(BERTH_HELM) $(BERTH_K8S) ## Helm chart and Kustomize overlays: lint, render each option, schema refusals, staleness (no cluster)
	e2e/helm/chart-check.sh

# kwok and its stock stages (node initialize, heartbeat with lease, pod fast)
# in one config file beside it; only `make bench` needs them.
.PHONY: kwok-bin
kwok-bin: $(BERTH_KWOK) ## build kwok, the scale search's node simulator
$(BERTH_KWOK):
	@mkdir -p $(KWOK_DIR)
	GOBIN=$(KWOK_DIR)/tmp go install -trimpath sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	@dir=$$(go mod download -json sigs.k8s.io/kwok@$(KWOK_VERSION) | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') && \
	  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
	    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do \
	    echo '---'; cat "$$dir/kustomize/stage/$$f.yaml"; done > $(KWOK_DIR)/stages.yaml
	@mv $(KWOK_DIR)/tmp/kwok $(BERTH_KWOK) && rmdir $(KWOK_DIR)/tmp

$(E2E_STATE)/bin/kubectl: $(BERTH_K8S)
	@mkdir -p $(E2E_STATE)/bin && printf '#!/bin/sh\nexec %s kubectl "$$@"\n' "$(BERTH_K8S)" > $@ && chmod +x $@

.PHONY: build
build: deps ## build the Rust workspace
	cargo build --workspace --exclude berth-e2e --locked

.PHONY: crds
crds: ## regenerate crds/ from the Rust types (and their copies: chart-sync)
	cargo run -q --locked -p berth-api --bin crdgen -- crds
	@$(MAKE) --no-print-directory chart-sync

.PHONY: crds-check
crds-check: ## fail if crds/ is stale
	cargo run -q --locked -p berth-api --bin crdgen -- --check crds

.PHONY: cluster-up
cluster-up: deps $(BERTH_K8S) $(E2E_STATE)/bin/kubectl ## start the local cluster (NODES=3)
	e2e/cluster/cluster.sh up --nodes $(NODES)

.PHONY: cluster-down
cluster-down: ## stop the local cluster, leaving no process behind
	@e2e/cluster/cluster.sh down

.PHONY: lint
lint: ## rustfmt, clippy (warnings are errors), gofmt of the cluster harness
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	@test -z "$$(gofmt -l e2e/cluster)" || { gofmt -l e2e/cluster; echo "gofmt: run gofmt -w e2e/cluster"; exit 1; }

.PHONY: unit
unit: deps ## unit tests (no cluster)
	cargo test --workspace --exclude berth-e2e --locked --no-fail-fast

.PHONY: e2e
e2e: ## e2e suites against the local cluster (hollow nodes and one real node) with berth-manager (started and stopped here), or E2E_KUBECONFIG
	@if [ -n "$$E2E_KUBECONFIG" ]; then \
	  echo "e2e against E2E_KUBECONFIG=$$E2E_KUBECONFIG"; \
	  cargo build --locked -p kubectl-berth && cargo test --locked --no-fail-fast -p berth-e2e -- --test-threads 4; rc=$$?; \
	  echo "audit of the cluster the suites leave behind (berth-manager audit)"; \
	  KUBECONFIG="$$E2E_KUBECONFIG" cargo run --locked -q -p berth-manager -- audit || rc=1; exit $$rc; \
	else \
	  cargo build --locked -p berth-manager -p berth-node-agent -p kubectl-berth && $(MAKE) --no-print-directory helm-bin && \
	  $(MAKE) --no-print-directory cluster-up && e2e/cluster/cluster.sh real-node && e2e/manager.sh up && \
	  { E2E_KUBECONFIG=$(KUBECONFIG_LOCAL) E2E_REQUIRE_REAL_NODE=1 cargo test --locked --no-fail-fast -p berth-e2e -- --test-threads 4; rc=$$?; \
	    echo "failover suite, alone: it stops the manager the suites above use"; \
	    E2E_KUBECONFIG=$(KUBECONFIG_LOCAL) cargo test --locked -p berth-e2e --test failover -- --ignored || rc=1; \
	    echo "install suite, alone: it uninstalls and reinstalls berth itself (helm, kustomize)"; \
	    E2E_KUBECONFIG=$(KUBECONFIG_LOCAL) cargo test --locked -p berth-e2e --test install -- --ignored --test-threads 1 || rc=1; \
	    echo "chaos suite, alone: it kills the manager's leader again and again and restarts the apiserver"; \
	    E2E_KUBECONFIG=$(KUBECONFIG_LOCAL) cargo test --locked -p berth-e2e --test chaos -- --ignored || rc=1; \
	    echo "audit of the cluster the suites leave behind (berth-manager audit)"; \
	    KUBECONFIG=$(KUBECONFIG_LOCAL) $${CARGO_TARGET_DIR:-target}/debug/berth-manager audit || rc=1; \
	    $(MAKE) --no-print-directory cluster-down; exit $$rc; }; \
	fi

.PHONY: test
test: deps ## everything CI runs: CRD freshness, chart and overlay checks, lint, unit tests, the CRI test on a real containerd, e2e on a real local cluster
	@mkdir -p target; set -o pipefail; \
	$(MAKE) --no-print-directory crds-check chart-check lint unit cri-test e2e 2>&1 | tee target/test.log; rc=$$?; \
	awk '/^test result:/ {p += $$4; f += $$6} END {printf "\ntotal: %d passed, %d failed\n", p, f}' target/test.log; \
	exit $$rc

.PHONY: demo
demo: deps build cluster-up ## the main job: local cluster, berth installed, an InplaceSet rolled in place in batches, then resized in place
	@e2e/manager.sh up
	@e2e/node-agents.sh up
	@e2e/demo.sh

.PHONY: demo-down
demo-down: cluster-down ## stop what `make demo` started

# A benchmark, never part of `make test`. It runs on a cluster of its own
# (BENCH_STATE), so a `make e2e` or `make demo` cluster is left alone, with a
# release build of berth-manager; BENCH_ARGS go to the benchmark
# (`cargo run -p berth-bench --bin bench-webhook -- --help` lists them).
# With E2E_KUBECONFIG set it measures that cluster and the berth-manager
# already serving it (server-side figures need its log: --manager-log).
BENCH_STATE ?= $(CURDIR)/target/e2e-bench
BENCH_ARGS  ?=
.PHONY: bench-webhook
bench-webhook: deps ## benchmark: webhook latency at 1000 reviews/s, pod create with vs without injection (BENCH_ARGS=...)
	@if [ -n "$$E2E_KUBECONFIG" ]; then \
	  echo "bench-webhook against E2E_KUBECONFIG=$$E2E_KUBECONFIG"; \
	  cargo run --locked --release -p berth-bench --bin bench-webhook -- $(BENCH_ARGS); \
	else \
	  target_dir=$${CARGO_TARGET_DIR:-$(CURDIR)/target}; \
	  cargo build --locked --release -p berth-manager -p berth-bench && \
	  $(MAKE) --no-print-directory cluster-up E2E_STATE=$(BENCH_STATE) && \
	  { E2E_STATE=$(BENCH_STATE) BERTH_MANAGER=$$target_dir/release/berth-manager e2e/manager.sh up && \
	    E2E_STATE=$(BENCH_STATE) E2E_KUBECONFIG=$(BENCH_STATE)/kubeconfig \
	      $$target_dir/release/bench-webhook $(BENCH_ARGS); rc=$$?; \
	    E2E_STATE=$(BENCH_STATE) e2e/manager.sh down; \
	    $(MAKE) --no-print-directory cluster-down E2E_STATE=$(BENCH_STATE); exit $$rc; }; \
	fi

# `make bench`: every scenario of the performance toolkit (in-place rollout vs
# StatefulSet, scale 0->M vs a plain client and a StatefulSet, the webhook,
# failover, resize, manager memory and the stepped scale search), on a cluster
# of its own (BENCH_STATE, BENCH_NODES hollow nodes and one real node) with release builds; one
# table, target/bench/bench.json and SVG plots. Sizes are BENCH_ARGS
# (`cargo run -p berth-bench --bin bench -- --help`); the defaults take about
# 20 min on 2 cores.
BENCH_NODES ?= 20
# The rollout-real scenario's node: a real kubelet on containerd (needs root);
# BENCH_REAL_NODE=0 leaves it out (and that scenario then fails, saying so).
BENCH_REAL_NODE ?= 1
.PHONY: bench
bench: deps $(BERTH_K8S) $(BERTH_KWOK) ## benchmark: every scenario, one table + target/bench/{bench.json,*.svg} (BENCH_ARGS=..., BENCH_NODES=20)
	@target_dir=$${CARGO_TARGET_DIR:-$(CURDIR)/target}; \
	cargo build --locked --release -p berth-manager -p berth-node-agent -p berth-bench && \
	$(MAKE) --no-print-directory cluster-up E2E_STATE=$(BENCH_STATE) NODES=$(BENCH_NODES) && \
	{ if [ "$(BENCH_REAL_NODE)" = 1 ]; then E2E_STATE=$(BENCH_STATE) e2e/cluster/cluster.sh real-node || \
	    { $(MAKE) --no-print-directory cluster-down E2E_STATE=$(BENCH_STATE); exit 1; }; fi; } && \
	{ export E2E_STATE=$(BENCH_STATE) E2E_KUBECONFIG=$(BENCH_STATE)/kubeconfig \
	    BERTH_MANAGER=$$target_dir/release/berth-manager BERTH_NODE_AGENT=$$target_dir/release/berth-node-agent; \
	  e2e/manager.sh up && $$target_dir/release/bench $(BENCH_ARGS); rc=$$?; \
	  e2e/manager.sh down 2; e2e/manager.sh down; \
	  $(MAKE) --no-print-directory cluster-down E2E_STATE=$(BENCH_STATE); exit $$rc; }

.PHONY: cri-test
cri-test: deps ## the node agent's CRI path against a real containerd (started and stopped here; needs root)
	cargo build --locked -p berth-node-agent --tests
	@trap 'e2e/containerd/containerd.sh down' EXIT; \
	e2e/containerd/containerd.sh up && eval "$$(e2e/containerd/containerd.sh env)" && \
	cargo test --locked -p berth-node-agent --test containerd -- --nocapture
