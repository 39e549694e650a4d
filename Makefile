# The two commands of the README. Each installs what the build needs first.
PROMPT ?= Why is the sky blue?

.PHONY: run test deps report
deps:
	@bash scripts/deps.sh

# Builds gearbx-run and runs the default model (SmolLM2-135M, obtained on first use).
run: deps
	cargo run --release --bin gearbx-run -- "$(PROMPT)"

# Unit and integration tests on the real model and llama.cpp.
test: deps
	cargo test --release

# The measurement report: SmolLM2 and Gemma-3-270M against static llama.cpp models, Austen text.
# Writes docs/results.md, docs/results.json and the charts (about 15 minutes on 2 cores).
DATA ?= $(HOME)/.cache/gearbx/data
report: deps
	python3 scripts/fetch-austen.py $(DATA)/austen
	bash scripts/fetch-gemma.sh $(DATA)/gemma-3-270m-q4_k_m.gguf
	cargo run --release --bin gearbx-bench -- --text $(DATA)/austen/pride-and-prejudice.txt \
		--out docs -m $(HOME)/.cache/gearbx/models/SmolLM2-135M-Instruct.Q4_1.gguf \
		-m $(DATA)/gemma-3-270m-q4_k_m.gguf
