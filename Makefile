# See README.md. Every target runs inside .venv/ made by `make setup`.
PY      ?= .venv/bin/python
MODEL   ?= default
SERVER  ?= embedded
HOST    ?= 127.0.0.1
GRPC_PORT ?= 8500
REST_PORT ?= 8501

# The tensorflow/serving release the deployment files pin, from its one source.
TFSERVING_VERSION ?= $(shell sed -n 's/^TFSERVING_VERSION=//p' deploy/compose/.env)
TFSERVING_VENV    ?= .venv-tfserving/$(TFSERVING_VERSION)
TFSERVING_WHEELS  ?= .cache/tfserving-wheels
CHECK_DIR         ?= build/tfserving-check

# make export: the serving_default batch sizes each new version warms at load
# (1,2,4,8,16,32 for the GPU batching config, deploy/config/*.gpu.config).
WARMUP_BATCH_SIZES ?= 1,2,4,8
# make tune: see docs/tuning.md. MODEL is a name in models.config there.
TUNE_MODEL     = $(if $(filter default,$(MODEL)),vit_digits,$(MODEL))
OUT           ?= build/tune/$(TUNE_MODEL)
TUNE_BUDGET_S ?= 480
P99_MS        ?= 50

.PHONY: setup test export serve bench check-tfserving tune

setup: .venv/.installed

.venv/.installed: requirements.lock
	python3.11 -m venv .venv
	.venv/bin/pip install --quiet -r requirements.lock
	touch $@

# Three workers (pytest-xdist), each taking whole modules (--dist loadfile,
# so a module's server and exports stay in one process). Three, on 2 cores:
# with two the cores sat idle a sixth of the run while tests waited on the
# servers they start (docs/testing.md). Modules go out in collection order
# (--no-loadscope-reorder; xdist would sort them by test count): the long
# ones first (tests/conftest.py's LONG_MODULES), then the rest in the run's
# random order. The 25 slowest phases are printed after the run, to keep
# the suite's time in view.
test: setup
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=25 tests

# Runs a representative set of exports the way tensorflow_model_server does
# (Session loader, signature tensor names, warmup replay) in tensorflow-cpu of
# the pinned serving release, in a side venv, and compares with JAX; then
# shows that without --xla_cpu_compilation_enabled (DisableXlaCompilation())
# the warmup fails with "XLA compilation disabled"; see docs/deployment.md. TFSERVING_VERSION=2.19.1 tries another release.
check-tfserving: setup $(TFSERVING_VENV)/.installed
	@start=$$(date +%s); \
	$(PY) -m checks.tfserving_prepare --out $(CHECK_DIR) && \
	$(TFSERVING_VENV)/bin/python checks/tfserving_session.py \
	    --expect-tensorflow $(TFSERVING_VERSION) --check-xla-flag $(CHECK_DIR)/plan.json; \
	status=$$?; \
	echo "check-tfserving: tensorflow-cpu==$(TFSERVING_VERSION) in $$(( $$(date +%s) - start ))s"; \
	exit $$status

$(TFSERVING_VENV)/.installed: checks/tfserving_venv.sh
	bash checks/tfserving_venv.sh $(TFSERVING_VERSION) $(TFSERVING_VENV) $(TFSERVING_WHEELS)
	touch $@

export: setup
	$(PY) -m export.default_model --repo models --model $(MODEL) \
	    --warmup-batch-sizes $(WARMUP_BATCH_SIZES)

# Measures batching configurations for one model on freshly started embedded
# servers and writes $(OUT)/batching_parameters.txt, report.json, report.png.
tune: setup
	$(PY) -m ops.tune --model $(TUNE_MODEL) --out $(OUT) --budget-s $(TUNE_BUDGET_S) \
	    --p99-ms $(P99_MS)

# tensorflow_model_server's command line, the same flags with the same values as
# deploy/compose/docker-compose*.yml and deploy/base (where each is explained); paths
# here are the repository's (tests/serving/test_deploy_flags.py compares the
# lists). --xla_cpu_compilation_enabled is required: without it the server
# calls DisableXlaCompilation() and the jax2tf exports fail to load, on both
# servers. --bind is the embedded server's only addition (loopback by default).
SERVE_FLAGS = --port=$(GRPC_PORT) --rest_api_port=$(REST_PORT) \
    --model_config_file=models.config --model_config_file_poll_wait_seconds=10 \
    --file_system_poll_wait_seconds=5 --allow_version_labels_for_unavailable_models=true \
    --xla_cpu_compilation_enabled=true --enable_batching=true \
    --batching_parameters_file=deploy/config/batching_parameters.config \
    --monitoring_config_file=deploy/config/monitoring.config --enable_model_warmup=true \
    --grpc_channel_arguments=grpc.max_connection_age_ms=300000 \
    --enable_grpc_healthcheck_service=true

# SERVER=embedded (default): python -m serving; SERVER=tfserving: the
# tensorflow/serving GPU image with docker compose; SERVER=tfserving-cpu: its
# CPU image. compose publishes 8500/8501 (GRPC_PORT/REST_PORT apply to the
# embedded server); PROFILES=monitoring adds Prometheus and Grafana.
COMPOSE_FILE_tfserving     = deploy/compose/docker-compose.yml
COMPOSE_FILE_tfserving-cpu = deploy/compose/docker-compose.cpu.yml
PROFILES ?=

serve: setup
ifneq ($(COMPOSE_FILE_$(SERVER)),)
	BIND_HOST=$(HOST) docker compose -f $(COMPOSE_FILE_$(SERVER)) \
	    $(foreach p,$(PROFILES),--profile $(p)) up
else ifeq ($(SERVER),embedded)
	$(PY) -m serving $(SERVE_FLAGS) --bind=$(HOST)
else
	@echo "make serve: SERVER must be embedded, tfserving or tfserving-cpu, not '$(SERVER)'" >&2; exit 2
endif

bench: setup
	$(PY) -m benchmarks
