# See README.md. Every target runs inside .venv/ made by `make setup`.
PY      ?= .venv/bin/python
MODEL   ?= default
SERVER  ?= embedded
HOST    ?= 127.0.0.1
GRPC_PORT ?= 8500
REST_PORT ?= 8501

# The tensorflow/serving release the deployment files pin, from its one source.
TFSERVING_VERSION ?= $(shell sed -n 's/^TFSERVING_VERSION=//p' serving/.env)
TFSERVING_VENV    ?= .venv-tfserving/$(TFSERVING_VERSION)
TFSERVING_WHEELS  ?= .cache/tfserving-wheels
CHECK_DIR         ?= build/tfserving-check

.PHONY: setup test export serve bench check-tfserving

setup: .venv/.installed

.venv/.installed: requirements.lock
	python3.11 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	touch $@

# The 25 slowest phases are printed after the run, to keep the suite's time in view.
test: setup
	$(PY) -m pytest -q --durations=25 tests

# Runs a representative set of exports the way tensorflow_model_server does
# (Session loader, signature tensor names, warmup replay) in tensorflow-cpu of
# the pinned serving release, in a side venv, and compares with JAX; see
# docs/deployment.md. TFSERVING_VERSION=2.19.1 tries another release.
check-tfserving: setup $(TFSERVING_VENV)/.installed
	@start=$$(date +%s); \
	$(PY) -m checks.tfserving_prepare --out $(CHECK_DIR) && \
	$(TFSERVING_VENV)/bin/python checks/tfserving_session.py \
	    --expect-tensorflow $(TFSERVING_VERSION) $(CHECK_DIR)/plan.json; \
	status=$$?; \
	echo "check-tfserving: tensorflow-cpu==$(TFSERVING_VERSION) in $$(( $$(date +%s) - start ))s"; \
	exit $$status

$(TFSERVING_VENV)/.installed: checks/tfserving_venv.sh
	bash checks/tfserving_venv.sh $(TFSERVING_VERSION) $(TFSERVING_VENV) $(TFSERVING_WHEELS)
	touch $@

export: setup
	$(PY) -m export.default_model --repo models --model $(MODEL)

serve: setup
ifeq ($(SERVER),tfserving)
	# compose publishes 8500/8501 (GRPC_PORT/REST_PORT apply to the embedded server)
	BIND_HOST=$(HOST) docker compose -f serving/docker-compose.yml up
else
	$(PY) -m serving --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) --bind=$(HOST) \
	    --model_config_file=models.config --model_config_file_poll_wait_seconds=5 \
	    --allow_version_labels_for_unavailable_models=true \
	    --monitoring_config_file=serving/config/monitoring.config
endif
# (labels: the rollout tool writes version labels into models.config; like
# tensorflow_model_server, the server checks them before loading anything at
# start-up, so a restart on that file needs the flag, as compose and k8s set it)

bench: setup
	$(PY) -m benchmarks
