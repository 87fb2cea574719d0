# Two commands do everything on a fresh machine: `make run` and `make test`.
.PHONY: setup setup-test run client test test-unit test-integration test-e2e lint format proto \
	cluster cluster-down cluster-status clean bench

VENV := .venv
PY := $(VENV)/bin/python
NAME ?= alice
ROUTE ?= 127.0.0.1:7100

setup:
	@./scripts/bootstrap.sh

setup-test:
	@./scripts/bootstrap.sh test

run: setup  ## the embedded cluster (route + 2 chat servers) in the foreground
	$(VENV)/bin/cim dev

client: setup  ## a console client: make client NAME=bob
	$(VENV)/bin/cim client --user $(NAME) --route $(ROUTE)

test: setup-test  ## every test: unit, integration, e2e
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup-test
	$(PY) -m pytest -q tests/integration

test-e2e: setup-test
	$(PY) -m pytest -q tests/e2e

lint: setup
	$(VENV)/bin/ruff check cim tests
	$(VENV)/bin/ruff format --check cim tests
	$(VENV)/bin/mypy cim
	$(PY) scripts/proto_compat.py

format: setup
	$(VENV)/bin/ruff check --fix cim tests
	$(VENV)/bin/ruff format cim tests

cluster: setup-test  ## ZooKeeper, Redis, 2 routes, 2 chat servers in the background
	./scripts/cluster.sh up

cluster-down:
	./scripts/cluster.sh down

cluster-status:
	./scripts/cluster.sh status

proto: setup
	./scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .cluster cim/proto/v1/*_pb2*.py cim/proto/v1/*_pb2*.pyi cim/proto/internal/v1/*_pb2*.py* cim/proto/admin/v1/*_pb2*.py* cim/proto/v1/described.binpb .pytest_cache .mypy_cache .ruff_cache

bench: setup-test  ## benchmark: a real local cluster against bare gRPC ceilings (~3 min)
	$(VENV)/bin/cim bench
