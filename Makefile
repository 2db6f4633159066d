# The README's two commands: `make demo` (install + make a meme) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench gallery

setup:
	./scripts/setup.sh

# The main job on the embedded defaults: no tokens, no config file needed.
demo: setup
	$(BIN)/memebot generate change-my-mind "pineapple on" -o meme.png

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check common model training bot cli fakes tests bench

bench:
	$(BIN)/python bench/render.py
	$(BIN)/python bench/generation.py
