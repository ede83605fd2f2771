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

.PHONY: setup demo test lint browser postgres bench checkpoints space space-push clean

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

## make test: lint + the whole test suite (installs Chromium and PostgreSQL for their tests when apt-get can)
test: setup browser postgres
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

## Debian's Chromium for the real-browser tests (never `playwright install`); the tests launch /usr/bin/chromium.
## Without it they skip, except under CI=true (.ci/run), where they fail.
browser:
	@[ -x /usr/bin/chromium ] || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser tests will skip (fail under CI=true)"; \
	  else echo "no root apt-get: the browser tests will skip (fail under CI=true)"; fi; }

## Debian's PostgreSQL for the vote-store tests (each run starts a throw-away cluster in a temp dir on a free port).
## Without it those tests skip, except under CI=true, where they fail.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "postgresql could not be installed: the PostgreSQL storage tests will skip (fail under CI=true)"; \
	  else echo "no root apt-get: the PostgreSQL storage tests will skip (fail under CI=true)"; fi; }

## make checkpoints: reproduce every shipped checkpoint from chitchat with fixed seeds (each stage resumes):
## tokenizer + MLE, LM, backward, RL, exports into checkpoints/, tuned anti-LM defaults, evaluation table
checkpoints: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/chatbot-arena pipeline --out . --preset shipped

bench: setup
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/decode_speed.py
	$(BIN)/python bench/batch_speed.py --batch 16 32
	$(BIN)/python bench/load.py --users 1 32 --duration 30

## make space: assemble a self-contained Hugging Face Space (code + shipped checkpoints) in dist/space/
space: setup
	$(BIN)/python -m demo_app.build_space

## make space-push SPACE=owner/name: build dist/space/ and upload it to that Space (write token in $HF_TOKEN)
space-push: setup
	@test -n "$(SPACE)" || { echo "usage: HF_TOKEN=hf_... make space-push SPACE=owner/name" >&2; exit 2; }
	$(BIN)/python -m demo_app.build_space --push "$(SPACE)"

clean:
	rm -rf $(VENV) dist .pytest_cache .ruff_cache
