# See README.md. Every target runs inside .venv/ made by `make setup`.
PY      ?= .venv/bin/python
MODEL   ?= default
SERVER  ?= embedded
HOST    ?= 127.0.0.1
GRPC_PORT ?= 8500
REST_PORT ?= 8501

.PHONY: setup test export serve bench

setup: .venv/.installed

.venv/.installed: requirements.lock
	python3.11 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	touch $@

test: setup
	$(PY) -m pytest -q tests

export: setup
	$(PY) -m export.default_model --repo models --model $(MODEL)

serve: setup
ifeq ($(SERVER),tfserving)
	# compose publishes 8500/8501 (GRPC_PORT/REST_PORT apply to the embedded server)
	BIND_HOST=$(HOST) docker compose -f serving/docker-compose.yml up
else
	$(PY) -m serving --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) --bind=$(HOST) \
	    --model_config_file=models.config --model_config_file_poll_wait_seconds=5 \
	    --monitoring_config_file=serving/config/monitoring.config
endif

bench: setup
	$(PY) -m benchmarks
