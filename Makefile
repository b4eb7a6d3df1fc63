# Everything a person or CI needs goes through these targets; each sets itself up.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto')
GEN := gen/python
GEN_STAMP := $(GEN)/.generated

.PHONY: all venv protos tools demo up test test-fast lint typecheck bench bench-dispatch bench-forecast bench-market load load-scale clean

all: protos

$(STAMP): requirements.txt requirements-nodeps.txt edge-agent/requirements.txt
	@echo ">> creating virtualenv in $(VENV) (first run downloads packages; takes a few minutes)"
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	@$(PY) -m pip install --progress-bar on -q --upgrade pip
	@$(PY) -m pip install --progress-bar on -q -r requirements.txt -r edge-agent/requirements.txt
	@$(PY) -m pip install --progress-bar on -q --no-deps -r requirements-nodeps.txt
	@$(PY) -c "import sys,site,pathlib; p=pathlib.Path(site.getsitepackages()[0])/'vpp_paths.pth'; r=pathlib.Path('.').resolve(); p.write_text('\n'.join(str(r/d) for d in ['services','edge-agent','$(GEN)'])+'\n')"
	@touch $(STAMP)
	@echo ">> virtualenv ready"

venv: $(STAMP)

$(GEN_STAMP): $(PROTO_SRC) $(STAMP)
	@echo ">> generating Python code from protos/"
	@rm -rf $(GEN) && mkdir -p $(GEN)
	@$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTO_SRC)
	@find $(GEN)/vpp -type d -exec touch {}/__init__.py \;
	@touch $(GEN_STAMP)

protos: $(GEN_STAMP)

# Real outside tools the end-to-end tests talk to the platform with (mbpoll, promtool).
tools:
	@if ! command -v mbpoll >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo ">> installing mbpoll and prometheus (promtool) from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mbpoll prometheus >/dev/null; \
	  else \
	    echo "!! mbpoll/promtool missing: install the Debian packages mbpoll and prometheus (needs root)"; \
	  fi; \
	fi

demo: protos
	@$(PY) -m vpp_demo.demo

up: protos
	@$(PY) -m vpp_demo.up

test: protos tools
	@$(PY) -m ruff check services edge-agent tests
	@$(PY) -m mypy
	@$(PY) -m pytest -q tests

test-fast: protos
	@$(PY) -m pytest -q tests -m "not slow"

lint: protos
	@$(PY) -m ruff check services edge-agent tests

typecheck: protos
	@$(PY) -m mypy

bench: protos
	@$(PY) -m vpp_demo.bench

# Dispatch as a TSO would prequalify it (~45 min): allocation vs HiGHS, activation -> Modbus latency with 50
# real agents, 1 h aFRR tracking closed vs open loop, kill -9 failover. ARGS="--sections failover" etc.
bench-dispatch: protos
	@$(PY) -m vpp_demo.bench_dispatch $(ARGS)

# Forecast backtests on real data (two splits), then the scores of this model configuration for ListModels.
bench-forecast: protos
	@$(PY) -m forecasting.backtest.cli $(ARGS)
	@$(PY) -m forecasting.backtest_scores --results out/backtest/results.json

# A week of day-ahead aFRR capacity bidding, 200 sites, real PV/load, 2018 German prices (~11 min on 2 cores):
# revenue vs perfect foresight and vs naive P50 bids; out/bench/market.{json,md,png}. ARGS="--help" lists options.
bench-market: protos
	@$(PY) -m vpp_demo.bench_market $(ARGS)

load: protos
	@$(PY) -m vpp_demo.load

# Fleet scale: ramps simulated sites 1k -> 10k against the real platform (~27 min); ARGS="--levels 500,1000 ..."
load-scale: protos
	@$(PY) -m vpp_demo.scale $(ARGS)

clean:
	rm -rf $(GEN) .pytest_cache .mypy_cache .ruff_cache out
