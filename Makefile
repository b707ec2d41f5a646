# gpupool — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := bash
export GPUPOOL_CACHE ?= $(HOME)/.cache/gpupool
CARGO ?= cargo

.PHONY: demo test tools lint crds fmt bench bench-placement bench-scale soak clean-cache

## Local demo: hub + two member clusters with KWOK GPU nodes, the operator, example jobs and an embedded SVM.
demo: tools
	$(CARGO) build -p gpupool-operator --bin gpupool
	$(CARGO) run -p gpupool-e2e --bin gpupool-demo

## Every test: formatting, lints, unit tests, program tests in LiteSVM and e2e tests on real API servers.
test: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## Build (once, cached outside the repo) etcd, kube-apiserver, kube-scheduler, kube-controller-manager,
## kubectl, KWOK and Helm from e2e/tools/go.mod, and promtool from e2e/tools/promtool/go.mod.
tools:
	@bash e2e/harness/build-tools.sh >/dev/null

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run -q -p gpupool-operator --bin crdgen

fmt:
	$(CARGO) fmt --all

## Allocator quality against baselines, then cluster-level placement quality.
bench: bench-placement
	$(CARGO) bench -p gpupool-operator --bench allocator

## Cluster-level placement quality: gpupool against best fit, first fit and a go-gpuallocator-style greedy.
bench-placement:
	$(CARGO) bench -p gpupool-operator --bench placement

## Scheduler at scale (not part of `make test`): placement microbenchmark over 100 members ×
## 1 000 nodes, then hub + 2 members with KWOK nodes and the release operator for N jobs.
## BENCH_SCALE_ARGS, e.g. `--jobs 500,2000 --skip-placement` or `--jobs 3000 --rate 50`.
bench-scale: tools
	$(CARGO) build --release -p gpupool-operator --bin gpupool -p gpupool-e2e --bin gpupool-bench-scale
	"$${CARGO_TARGET_DIR:-target}/release/gpupool-bench-scale" $(BENCH_SCALE_ARGS)

## Chaos soak (not part of `make test`; a 2-minute smoke of it is): hub + 3 members (push DRA, push
## device plugin, pull), two operator replicas, churn and faults as processes, invariants checked
## throughout; exits non-zero on any violation. SOAK_ARGS, e.g.
## `--minutes 30 --seed 7 --faults leader-kill=2,member-api=3,hub-restart=1,agent-kill=2,pod-delete=4`.
soak: tools
	$(CARGO) build -p gpupool-operator --bin gpupool -p gpupool-e2e --bin gpupool-soak
	"$${CARGO_TARGET_DIR:-target}/debug/gpupool-soak" $(SOAK_ARGS)

clean-cache:
	rm -rf "$(GPUPOOL_CACHE)"
