# The two commands of the README. Each installs what the build needs first.
PROMPT ?= Why is the sky blue?

.PHONY: run test deps report lib header memcheck patches patches-edit fuzz arm
deps:
	@bash scripts/deps.sh

# Builds gearbx-run and runs the default model (SmolLM2-135M, obtained on first use).
run: deps
	cargo run --release --bin gearbx-run -- "$(PROMPT)"

# Unit and integration tests on the real model and llama.cpp: every target built (benchmarks
# are built, not run), clippy with warnings as errors, the tests and doctests, then the chat
# example for two turns on the default model.
test: deps
	cargo build --release --workspace --all-targets
	cargo clippy --release --workspace --all-targets -- -D warnings
	cargo test --release --workspace
	printf 'Name a colour.\nAnd another one?\n' | cargo run --release --example chat

# The measurement report: SmolLM2 and Gemma-3-270M against static llama.cpp models, Austen text.
# Writes docs/results.md, docs/results.json and the charts (about 15 minutes on 2 cores), then
# the KV cache types at 2,048 tokens of context (docs/kv/cpu-2k, about 10 minutes more).
DATA ?= $(HOME)/.cache/gearbx/data
report: deps
	python3 scripts/fetch-austen.py $(DATA)/austen
	bash scripts/fetch-gemma.sh $(DATA)/gemma-3-270m-q4_k_m.gguf
	cargo run --release -p gearbx-bench -- --text $(DATA)/austen/pride-and-prejudice.txt \
		--out docs -m $(HOME)/.cache/gearbx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
		-m $(DATA)/gemma-3-270m-q4_k_m.gguf
	cargo run --release -p gearbx-bench -- kv --text $(DATA)/austen/pride-and-prejudice.txt \
		--ctx 2048 --out docs/kv/cpu-2k -m $(HOME)/.cache/gearbx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
		-m $(DATA)/gemma-3-270m-q4_k_m.gguf

# The C libraries, header and pkg-config files under PREFIX (see "The C API" in the README).
PREFIX ?= $(HOME)/.local
lib: deps
	bash scripts/install-lib.sh $(PREFIX)

# Regenerates include/gearbx.h from src/capi (cbindgen, pinned in Cargo.toml).
header:
	GEARBX_UPDATE_HEADER=1 cargo test --release --test header

# The two C programs of tests/c under valgrind (built by `cargo test --release --test capi`).
memcheck: deps
	cargo test --release --test capi
	bash scripts/memcheck.sh

# Our patch series on the pinned llama.cpp (vendor/; README "Build notes"): patches-edit makes
# vendor/work/llama.cpp, a git tree with one commit per patch; patches writes vendor/patches
# back from its commits.
patches-edit:
	bash scripts/patches.sh edit
patches:
	bash scripts/patches.sh export

# The fuzz targets (fuzz/): libFuzzer through cargo-fuzz on stable Rust, FUZZ_SECONDS per
# target (CI runs 20). Installs cargo-fuzz on first use.
FUZZ_SECONDS ?= 60
fuzz: deps
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

# The C kernels' NEON twins on AArch64 under qemu-aarch64 (cross compiler and qemu-user from
# Debian, installed on first use): scripts/arm-check.sh.
arm:
	bash scripts/arm-check.sh
