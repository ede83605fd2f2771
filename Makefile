# Seq2Seq Chatbot Arena — every target sets up what it needs in .venv on a fresh machine (Python 3.11 + pip).
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
# torch is pinned here (pyproject accepts a range): on the project's machines pip finds the CPU build of
# 2.13.0 in its local wheel folder; an unpinned torch would pull several GB of CUDA packages. Elsewhere, ask for
# the CPU build explicitly: make TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" demo
TORCH_PIN   := torch==2.13.0
TORCH_INDEX ?=
HOST      ?= 127.0.0.1
PORT      ?= 7860

.PHONY: setup demo test lint browser bench checkpoints space clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_INDEX) $(TORCH_PIN)
	$(BIN)/pip install -q -e ".[app,test]"
	touch $@

setup: $(VENV)/.installed

## make demo: set up and serve the app on the shipped checkpoints (http://$(HOST):$(PORT))
demo: setup
	$(BIN)/chatbot-arena serve --host $(HOST) --port $(PORT)

## make test: lint + the whole test suite (installs Chromium for the browser test when apt-get can)
test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

## Debian's Chromium for the real-browser test (never `playwright install`)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will skip"; \
	  else echo "no root apt-get: the browser test will skip"; fi; }

## make checkpoints: reproduce every shipped checkpoint from chitchat with fixed seeds (each stage resumes)
RUN := OMP_WAIT_POLICY=PASSIVE $(BIN)/chatbot-arena
MLE_ARGS := --out runs/mle --epochs 12 --max-steps 8800 --eval-every 800 --save-every 200 --no-progress
checkpoints: setup
	$(RUN) train $(MLE_ARGS)
	$(RUN) train --kind lm --tokenizer runs/mle/tokenizer.json --out runs/lm --epochs 4 --max-steps 6400 \
	  --eval-every 800 --save-every 200 --no-progress
	$(RUN) train --kind backward --tokenizer runs/mle/tokenizer.json --out runs/backward --epochs 3 \
	  --max-steps 4800 --eval-every 800 --save-every 200 --no-progress
	$(RUN) train-rl --policy runs/mle/best --backward runs/backward/best --out runs/rl
	$(RUN) export runs/mle checkpoints/mle
	$(RUN) export runs/lm checkpoints/lm
	$(RUN) export runs/backward checkpoints/backward
	$(RUN) export runs/rl checkpoints/rl
	$(RUN) tune --write
	$(RUN) evaluate

bench: setup
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/decode_speed.py

## make space: assemble a self-contained Hugging Face Space (code + shipped checkpoints) in dist/space/
space: setup
	$(BIN)/python -m demo_app.build_space

clean:
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
