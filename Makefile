# Two commands for a new user: `make demo` and `make test`. Both set themselves up first;
# every step is idempotent (a second run reuses what the first installed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HAP_CACHE_DIR ?= $(HOME)/.cache/hap
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml)
KAFKA_LIBS := $(HAP_CACHE_DIR)/kafka-$(KAFKA_VERSION)/libs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HAP_CACHE_DIR

.PHONY: setup demo test test-fast lint clean stack-down generate

setup: $(VENV)/.installed kafka-jars system-packages

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The Kafka broker jars come from Maven Central through deploy/kafka/pom.xml, unless the
# user brings a broker (HAP_KAFKA_BOOTSTRAP) or an install (HAP_KAFKA_HOME).
.PHONY: kafka-jars
kafka-jars:
	@if [ -n "$$HAP_KAFKA_BOOTSTRAP" ] || [ -n "$$HAP_KAFKA_HOME" ]; then \
	  echo "kafka: using $${HAP_KAFKA_BOOTSTRAP:-$$HAP_KAFKA_HOME}"; \
	elif ls $(KAFKA_LIBS)/kafka_2.13-*.jar >/dev/null 2>&1; then \
	  echo "kafka: jars cached in $(KAFKA_LIBS)"; \
	else \
	  command -v java >/dev/null || { echo "setup: Java 17+ is required for Kafka (or set HAP_KAFKA_BOOTSTRAP)"; exit 1; }; \
	  command -v mvn >/dev/null || { echo "setup: Maven is required to resolve the Kafka jars (or set HAP_KAFKA_HOME)"; exit 1; }; \
	  echo "kafka: resolving kafka_2.13 $(KAFKA_VERSION) into $(KAFKA_LIBS)"; \
	  mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
	    -DincludeScope=runtime -DoutputDirectory=$(KAFKA_LIBS).tmp && \
	  rm -rf $(KAFKA_LIBS) && mv $(KAFKA_LIBS).tmp $(KAFKA_LIBS); \
	fi

# redis-server and prometheus from Debian's packages, when missing.
.PHONY: system-packages
system-packages:
	@missing=""; \
	if [ -z "$$HAP_REDIS_URL" ] && ! command -v redis-server >/dev/null; then missing="$$missing redis-server"; fi; \
	if ! command -v prometheus >/dev/null; then missing="$$missing prometheus"; fi; \
	if ! ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1'; then missing="$$missing libgomp1"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/hap demo --report out/demo/report.json

# The suite runs on TEST_WORKERS processes (pytest-xdist), each with its own stack (its own broker,
# Redis and Prometheus on free ports), a test file's tests on one of them; most integration tests
# wait on windows, timeouts and restarts, so two share a 2-core machine well. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The tests that start no service (no Kafka, Redis or Prometheus, no setup beyond the venv): every test that
# takes a stack fixture is marked `integration` by tests/conftest.py and left out here.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not integration"

# Regenerate the files made from code: the topics' JSON Schemas and the field tables of
# docs/contracts.md (streams/contract/fields.py), dashboards, alert rules and provisioning (deploy/dashboards),
# the kustomize base's KafkaTopics, PrometheusRule and dashboards (deploy/k8s/generate.py), the settings
# reference in docs/settings.md (deploy/settings_reference.py).
# The tests fail while a checked-in copy is stale.
generate: setup
	$(PY) -m streams.contract.fields
	$(VENV)/bin/hap dashboards build
	$(PY) -m deploy.k8s.generate
	$(PY) -m deploy.settings_reference

lint: setup
	$(VENV)/bin/ruff check streams learner feature_store router deploy tests bench

stack-down:
	$(VENV)/bin/hap stack down

clean:
	rm -rf $(VENV) .hap out
