# The two set-up commands of the README. Both work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test

# Main job: install, prepare the default model, answer a chat prompt (streamed) with a latency line.
demo:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[prepare]"
	$(BIN)/ovgen prepare
	$(BIN)/ovgen generate --chat --max-new-tokens 64 "What is the capital of France?"

# Tests: install the dev extra, prepare every flavour, run the whole suite (slow tests included).
test:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/ovgen prepare --flavours hf,optimum,onnx,draft,phi3-tiny
	$(BIN)/python -m pytest -q
