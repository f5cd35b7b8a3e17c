# See README.md. Every target runs inside .venv/ made by `make setup`.
PY      ?= .venv/bin/python
MODEL   ?= default
SERVER  ?= embedded
HOST    ?= 127.0.0.1

.PHONY: setup test export serve bench

setup: .venv/.installed

.venv/.installed: requirements.lock
	python3.11 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -r requirements.lock
	touch $@

test: setup
	$(PY) -m pytest -q tests

export: setup
	$(PY) -m export.default_model --repo models --model $(MODEL)

serve: setup
ifeq ($(SERVER),tfserving)
	docker compose -f serving/docker-compose.yml up
else
	$(PY) -m serving --port=8500 --rest_api_port=8501 --bind=$(HOST) \
	    --model_config_file=models.config --model_config_file_poll_wait_seconds=5
endif

bench: setup
	$(PY) -m benchmarks
