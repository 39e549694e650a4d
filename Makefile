# The two commands of the README. Each installs what the build needs first.
PROMPT ?= Why is the sky blue?

.PHONY: run test deps
deps:
	@bash scripts/deps.sh

# Builds gearbx-run and runs the default model (SmolLM2-135M, obtained on first use).
run: deps
	cargo run --release --bin gearbx-run -- "$(PROMPT)"

# Unit and integration tests on the real model and llama.cpp.
test: deps
	cargo test --release
