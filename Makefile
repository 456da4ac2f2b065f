# Two entry points: `make demo` (train on Fashion-MNIST with the cosine_warmup policy) and
# `make test` (every test). Each installs what it needs on first use and is quick after:
# the demo only torch, the Rust policies and the data; the tests also the Python packages
# that read back what the trainer writes and the toolchains of the other policy languages.
# Installs live under $(CACHE), outside the clone, so a fresh clone reuses them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CACHE ?= $(HOME)/.cache/trainer
TORCH_VERSION := 2.11.0
# The torchvision release built against that torch.
TORCHVISION_VERSION := 0.26.0
VENV := $(CACHE)/venv-torch-$(TORCH_VERSION)
PYTHON := $(VENV)/bin/python
TORCH_INSTALLED := $(VENV)/.installed-torch
TEST_PACKAGES := $(VENV)/.installed-test-packages
CAPTION_EVAL_INSTALLED := $(VENV)/.installed-pycocoevalcap
PYCOCOEVALCAP_VERSION := 1.2
TORCH_DIR = $(shell $(PYTHON) -c 'import torch, os; print(os.path.dirname(torch.__file__))')
export CARGO_TARGET_DIR := $(CACHE)/target
FASHION_MNIST := /usr/share/datasets/fashion-mnist
WASM_TARGET := wasm32-unknown-unknown
COMPONENTIZE := $(CARGO_TARGET_DIR)/tool/componentize
POLICIES := aug_curriculum constant cosine_warmup early_stopping grad_balance grad_clip layerwise llrd loss_balance \
	one_cycle ram_balance reduce_on_plateau spike_guard staged_unfreeze step_decay warmup_stable_decay
POLICY_DIR := build/policies
FIXTURES := hostile_policy
FIXTURE_DIR := build/fixtures
# cosine_warmup and early_stopping written again in Python, JavaScript and C, built into
# $(POLICY_DIR)/<language>_<name>.wasm by toolchains installed under $(CACHE).
LANGUAGES := python js c
LANGUAGE_POLICIES := cosine_warmup early_stopping
LANGUAGE_WASM := $(foreach l,$(LANGUAGES),$(LANGUAGE_POLICIES:%=$(POLICY_DIR)/$(l)_%.wasm))
COMPONENTIZE_PY_VERSION := 0.25.1
COMPONENTIZE_PY := $(VENV)/bin/componentize-py
COMPONENTIZE_JS_VERSION := 0.23.0
COMPONENTIZE_JS := $(CACHE)/node/node_modules/.bin/componentize-js
# Python and JavaScript components built before, under the hash of what they were built from.
KEPT_COMPONENTS := $(CACHE)/kept-components
WIT_BINDGEN_VERSION := 0.61.1
WIT_BINDGEN := $(CACHE)/wit-bindgen-$(WIT_BINDGEN_VERSION)/bin/wit-bindgen
CLANG := /usr/bin/clang-19
C_BUILD := build/c
# The interface version the policies of every language are built against: the newest.
WIT := wit/v1.1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-times setup test-setup sweep-setup policies policies-all device-check

# The trainer embeds the standard policies of $(POLICY_DIR) when it is built, so `policies`
# comes first: as a prerequisite, it is done before these recipes run cargo.
demo: setup policies
	cargo build --release --bin trainer
	$(CARGO_TARGET_DIR)/release/trainer train --policy cosine_warmup --run-dir runs/demo --overwrite

# Two tests run at once, and most start a trainer (or Python with torch) whose OpenMP threads
# spin some 300,000 times waiting for work: on 2 cores, two such processes spin on the cores
# the other computes on. Two 40-step tagging runs side by side took 40-63 s with the default
# and 22 s spinning 1,000 times (one alone: 12-13 s either way). For the tests only: the benchmarks keep the default.
TEST_ENV := GOMP_SPINCOUNT=1000

# Every bench target is built first (not run): one that no longer compiles fails at once.
test: test-setup policies-all
	cargo bench --workspace --no-run
	$(TEST_ENV) cargo test --release --workspace

# Each test binary's wall time, slowest first, so a change sees what it adds to `make test`.
test-times: test-setup policies-all
	$(TEST_ENV) benches/test-times.sh

OPEN_CLIP := $(CACHE)/open_clip
OPEN_CLIP_VERSION := 3.3.0
TIMM_VERSION := 1.0.31
# open_clip itself, the reference the tests compare open_clip checkpoints with, and timm
# (which open_clip requires), whose Swin Transformer is the reference of RAM's image encoder.
OPEN_CLIP_INSTALLED := $(VENV)/.installed-open-clip-$(OPEN_CLIP_VERSION)-timm-$(TIMM_VERSION)
CLIP_BPE := $(OPEN_CLIP)/bpe_simple_vocab_16e6.txt.gz
WEBDATASET_VERSION := 1.0.2
WEBDATASET_INSTALLED := $(VENV)/.installed-webdataset-$(WEBDATASET_VERSION)
OPTUNA_VERSION := 5.1.0
CMAES_VERSION := 0.13.1
OPTUNA_INSTALLED := $(VENV)/.installed-optuna-$(OPTUNA_VERSION)
RAY_VERSION := 2.60.0
RAY_INSTALLED := $(VENV)/.installed-ray-$(RAY_VERSION)

# What benches/device-check.sh needs on a GPU machine that has torch but no Rust and no
# network, in one folder git ignores, to carry there: the trainer (stripped, to fit the
# carry limit; the standard policies are inside it), the demo's data, CLIP's BPE vocabulary
# (read at run time for a --model folder without tokenizer.json) and the preload that
# counts the trainer's host syncs.
DEVICE_CHECK := target/device-check
device-check: setup policies
	cargo build --release --bin trainer
	rm -rf $(DEVICE_CHECK) && mkdir -p $(DEVICE_CHECK)/fashion-mnist
	strip -o $(DEVICE_CHECK)/trainer $(CARGO_TARGET_DIR)/release/trainer
	cp $(FASHION_MNIST)/*-ubyte.gz $(DEVICE_CHECK)/fashion-mnist/
	cp $(CLIP_BPE) $(DEVICE_CHECK)/
	cc -shared -fPIC -O2 -o $(DEVICE_CHECK)/sync_debug.so benches/device_check_sync.c -ldl
	du -sh $(DEVICE_CHECK)

# Gloo's headers, which torch's c10d headers include and the torch wheel lacks (see
# host/build.rs): Debian's libgloo-dev, unpacked, checked by its hash.
GLOO_DEB := libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb
GLOO_DEB_SHA256 := 80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
GLOO_INCLUDE := $(CACHE)/gloo/usr/include
# The CUDA toolkit headers that NCCL's process group needs beyond what torch's CUDA wheels
# bring (see host/build.rs), for the CUDA 13.0 of torch 2.11: headers only, a few MB.
CUDA_HEADER_WHEELS := nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
CUDA_INCLUDE := $(CACHE)/cuda-headers/nvidia/cu13/include

# What the trainer's build and the demo need.
setup: .cargo/config.toml $(FASHION_MNIST)/train-images-idx3-ubyte.gz $(CACHE)/wasm-target.ok $(CLIP_BPE)

# What the tests need besides: the Python packages of the reference sides and the
# toolchains of the Python, JavaScript and C policies.
test-setup: setup $(TEST_PACKAGES) $(CAPTION_EVAL_INSTALLED) $(OPEN_CLIP_INSTALLED) $(WEBDATASET_INSTALLED) $(OPTUNA_INSTALLED) $(RAY_INSTALLED) $(COMPONENTIZE_PY) $(COMPONENTIZE_JS) $(WIT_BINDGEN) $(CLANG)

# Plain `cargo build` / `cargo test` find libtorch and the shared target folder through this.
.cargo/config.toml: $(TORCH_INSTALLED) $(GLOO_INCLUDE)/gloo/algorithm.h $(CUDA_INCLUDE)/crt/host_config.h Makefile
	mkdir -p .cargo
	printf '%s\n' '# Written by `make`; machine-specific.' '[build]' \
		'target-dir = "$(CARGO_TARGET_DIR)"' '' '[env]' \
		'LIBTORCH = "$(TORCH_DIR)"' 'TRAINER_PYTHON = "$(PYTHON)"' 'TRAINER_GLOO_INCLUDE = "$(GLOO_INCLUDE)"' 'TRAINER_CUDA_INCLUDE = "$(CUDA_INCLUDE)"' > $@

$(CUDA_INCLUDE)/crt/host_config.h: $(TORCH_INSTALLED)
	rm -rf $(CACHE)/cuda-headers.tmp && mkdir -p $(CACHE)/cuda-headers.tmp
	$(VENV)/bin/pip download --quiet --disable-pip-version-check --no-deps $(CUDA_HEADER_WHEELS) -d $(CACHE)/cuda-headers.tmp
	cd $(CACHE)/cuda-headers.tmp && $(PYTHON) -c 'import glob, zipfile; \
		[zipfile.ZipFile(wheel).extractall("root") for wheel in glob.glob("*.whl")]'
	rm -rf $(CACHE)/cuda-headers && mv $(CACHE)/cuda-headers.tmp/root $(CACHE)/cuda-headers && rm -rf $(CACHE)/cuda-headers.tmp

$(GLOO_INCLUDE)/gloo/algorithm.h:
	rm -rf $(CACHE)/gloo.tmp && mkdir -p $(CACHE)/gloo.tmp
	curl -sSfL -o $(CACHE)/gloo.tmp/gloo.deb "http://deb.debian.org/debian/pool/main/g/gloo/$(GLOO_DEB)"
	echo "$(GLOO_DEB_SHA256)  $(CACHE)/gloo.tmp/gloo.deb" | sha256sum --check --quiet
	dpkg-deb -x $(CACHE)/gloo.tmp/gloo.deb $(CACHE)/gloo.tmp/root
	rm -rf $(CACHE)/gloo && mv $(CACHE)/gloo.tmp/root $(CACHE)/gloo && rm -rf $(CACHE)/gloo.tmp

# The trainer links the libtorch of this venv's torch.
$(TORCH_INSTALLED):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) numpy
	touch $@

# transformers, tensorboard and pycocotools read what the trainer writes, in the tests;
# scipy is the reference matcher of the detection benchmark and resizes RAM's position tables
# in the tests' reference, torchvision's transforms the reference of the data pipeline's.
$(TEST_PACKAGES): $(TORCH_INSTALLED)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) transformers tensorboard \
		pycocotools scipy torchvision==$(TORCHVISION_VERSION)
	touch $@

# pycocoevalcap: the COCO caption evaluation, the reference of the caption metrics.
$(CAPTION_EVAL_INSTALLED): $(TEST_PACKAGES)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check pycocoevalcap==$(PYCOCOEVALCAP_VERSION)
	touch $@

$(OPEN_CLIP_INSTALLED): $(TEST_PACKAGES)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) \
		torchvision==$(TORCHVISION_VERSION) open_clip_torch==$(OPEN_CLIP_VERSION) timm==$(TIMM_VERSION)
	touch $@

# Optuna runs `trainer sweep`'s search (its version is the driver's, `sweep::OPTUNA_VERSION`);
# cmaes is its CMA-ES sampler's; Ray Tune runs population-based training
# (`sweep::RAY_VERSION`). The trainer built here runs both with this Python.
sweep-setup: setup $(OPTUNA_INSTALLED) $(RAY_INSTALLED)

$(OPTUNA_INSTALLED): $(TORCH_INSTALLED)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check optuna==$(OPTUNA_VERSION) cmaes==$(CMAES_VERSION)
	touch $@

$(RAY_INSTALLED): $(TORCH_INSTALLED)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'ray[tune]==$(RAY_VERSION)'
	touch $@

# webdataset writes the shards the tests train on, and is the reference of the shard
# reading benchmark.
$(WEBDATASET_INSTALLED): $(TORCH_INSTALLED)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check torch==$(TORCH_VERSION) webdataset==$(WEBDATASET_VERSION)
	touch $@

# OpenAI CLIP's BPE merges (and open_clip's tokenizer.py, the reference for the golden ids),
# taken from the open_clip_torch wheel on PyPI.
$(CLIP_BPE): $(TORCH_INSTALLED)
	rm -rf $(OPEN_CLIP).tmp && mkdir -p $(OPEN_CLIP).tmp
	$(VENV)/bin/pip download --quiet --disable-pip-version-check --no-deps open_clip_torch==$(OPEN_CLIP_VERSION) -d $(OPEN_CLIP).tmp
	cd $(OPEN_CLIP).tmp && $(PYTHON) -c 'import glob, zipfile; wheel = zipfile.ZipFile(glob.glob("*.whl")[0]); \
		[open(name.split("/")[-1], "wb").write(wheel.read(name)) for name in \
		 ("open_clip/tokenizer.py", "open_clip/bpe_simple_vocab_16e6.txt.gz")]'
	mkdir -p $(OPEN_CLIP) && mv $(OPEN_CLIP).tmp/tokenizer.py $(OPEN_CLIP).tmp/bpe_simple_vocab_16e6.txt.gz $(OPEN_CLIP)/
	rm -rf $(OPEN_CLIP).tmp

$(FASHION_MNIST)/train-images-idx3-ubyte.gz:
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

# The toolchains of the policies in other languages: componentize-py from PyPI,
# componentize-js from npm (with the machine's Node.js, or Debian's), clang with wasi-libc
# from Debian, wit-bindgen's C generator from crates.io at the workspace's wit-bindgen version.
$(COMPONENTIZE_PY): $(TORCH_INSTALLED)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	touch $@

$(COMPONENTIZE_JS):
	command -v npm > /dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm install --prefix $(CACHE)/node --no-audit --no-fund --loglevel=error @bytecodealliance/componentize-js@$(COMPONENTIZE_JS_VERSION)
	touch $@

$(WIT_BINDGEN):
	cargo install --locked --root $(CACHE)/wit-bindgen-$(WIT_BINDGEN_VERSION) wit-bindgen-cli@$(WIT_BINDGEN_VERSION)

$(CLANG):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32

$(CACHE)/wasm-target.ok:
	rustup target add $(WASM_TARGET)
	mkdir -p $(CACHE) && touch $@

# Wraps the core modules named in $(1) into components in folder $(2).
componentize = mkdir -p $(2) && for p in $(1); do \
	$(COMPONENTIZE) $(CARGO_TARGET_DIR)/$(WASM_TARGET)/policy/$$p.wasm $(2)/$$p.wasm; done

# The standard policies into build/policies/ (built into the trainer by its next cargo build).
policies: setup
	cargo build --profile policy --target $(WASM_TARGET) $(addprefix -p ,$(POLICIES))
	cargo build --profile tool -p componentize
	$(call componentize,$(POLICIES),$(POLICY_DIR))

# Besides, the test fixtures into build/fixtures/ and the policies of the other languages.
policies-all: test-setup policies
	cargo build --profile policy --target $(WASM_TARGET) $(addprefix -p ,$(FIXTURES))
	$(call componentize,$(FIXTURES),$(FIXTURE_DIR))
	$(MAKE) --no-print-directory $(LANGUAGE_WASM)

# componentize-py and componentize-js build different bytes from the same sources on each
# run, and the trainer caches compiled components by their bytes: a fresh clone would compile
# each of them again (13-15 s each on 2 cores). $(call kept,COMMAND,TOOL) therefore runs
# COMMAND, whose last word is `-o`, only when $(KEPT_COMPONENTS) has no component built from
# the same prerequisites, command and TOOL version, and copies that component to $@. Each
# change of the sources adds one (12-18 MB); deleting the folder only costs a rebuild.
kept = mkdir -p $(@D) $(KEPT_COMPONENTS) && \
	key=$$( { cat $^; echo '$(1) $(2)'; } | sha256sum | cut -c1-16 ) && \
	kept=$(KEPT_COMPONENTS)/$(@F:.wasm=)-$$key.wasm && \
	{ [ -f $$kept ] || { $(1) $$kept.tmp > /dev/null && mv $$kept.tmp $$kept; }; } && \
	cp $$kept $@

$(POLICY_DIR)/python_%.wasm: policies/python/%/app.py policies/python/trainer_policy.py $(WIT)/policy.wit
	$(call kept,$(COMPONENTIZE_PY) --quiet -d $(WIT) -w policy componentize --stub-wasi \
		-p policies/python -p policies/python/$* app -o,componentize-py $(COMPONENTIZE_PY_VERSION))

# componentize-js's --disable takes every WASI feature: the component imports only the host.
$(POLICY_DIR)/js_%.wasm: policies/js/%/policy.js policies/js/trainer_policy.js $(WIT)/policy.wit
	$(call kept,$(COMPONENTIZE_JS) $< -w $(WIT) -n policy -d stdio random clocks http fetch-event -o,\
		componentize-js $(COMPONENTIZE_JS_VERSION))

$(C_BUILD)/bindings/policy.c: $(WIT)/policy.wit
	$(WIT_BINDGEN) c $(WIT) -w policy --out-dir $(@D) > /dev/null

# A core module (wasi-libc for its pure functions only) with the bindings' component-type
# section, wrapped by componentize like the Rust policies.
$(POLICY_DIR)/c_%.wasm: policies/c/%/policy.c policies/c/trainer_policy.c policies/c/trainer_policy.h \
		policies/c/wasi_stubs.c $(C_BUILD)/bindings/policy.c
	mkdir -p $(@D)
	$(CLANG) --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -I $(C_BUILD)/bindings -I policies/c \
		$(filter %.c,$^) $(C_BUILD)/bindings/policy_component_type.o -o $(C_BUILD)/$*.core.wasm
	$(COMPONENTIZE) $(C_BUILD)/$*.core.wasm $@
