# The hap-prerank package: one image for every component (`hap streams`, `hap learner`,
# `hap router`, `hap simulate`, `hap models`); the command picks the component.
#
#   docker build -t hap-prerank:0.1.0 .
#   docker run --rm -e HAP_KAFKA_BOOTSTRAP=... -e HAP_REDIS_URL=... hap-prerank:0.1.0 router
#
# torch is the bulk of the image. For a CPU-only image point pip at an index that serves CPU
# wheels of torch: docker build --build-arg PIP_EXTRA_INDEX_URL=<that index> ...
# Secrets (HAP_KAFKA_SASL_PASSWORD, HAP_REDIS_PASSWORD) are passed at run time, never built in.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streams streams
COPY learner learner
COPY feature_store feature_store
COPY router router
COPY deploy deploy
RUN python -m venv /opt/hap && /opt/hap/bin/pip install --no-compile /src

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 hap \
    && useradd --system --uid 10001 --gid hap --home-dir /var/lib/hap --create-home hap
COPY --from=build /opt/hap /opt/hap
# HAP_DATA_DIR holds the learner's checkpoint and the streams workers' state: mount a volume there.
# The metrics and HTTP servers bind every interface, for a Prometheus and clients on other hosts.
ENV PATH=/opt/hap/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    HAP_DATA_DIR=/var/lib/hap \
    HAP_METRICS_HOST=0.0.0.0
WORKDIR /var/lib/hap
USER 10001:10001
# router (API and metrics), streams metrics, learner metrics
EXPOSE 8080 9101 9102
ENTRYPOINT ["hap"]
CMD ["--help"]
