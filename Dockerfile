# The operator image: `agenttest run` as a non-root user.
#
#   docker build -t agenttest/operator:0.1.0 .
#
# Two stages: the build stage installs the project (without the dev extras)
# into a virtual environment; the final stage copies only that environment,
# so no source tree, build tools or pip caches end up in the image. The
# environment's python is a symlink to /usr/local/bin/python3.11 of the same
# base image, which is why both stages must use the same one.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agenttest
WORKDIR /src
# What `pip install .` needs: the metadata (pyproject.toml names README.md as
# the readme) and the source root. Everything else is kept out by
# .dockerignore anyway.
COPY pyproject.toml README.md ./
# The development kit (operator/agenttest_dev) is neither in the context
# (.dockerignore) nor in the wheel (pyproject.toml's packages include).
COPY operator/ operator/
RUN /opt/agenttest/bin/pip install . \
    && /opt/agenttest/bin/python -m compileall -q /opt/agenttest/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="agenttest-operator" \
      org.opencontainers.image.description="Kubernetes operator that tests Strands agents and packages the ones that pass" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001 match runAsUser/runAsGroup in manifests/deployment.yaml.
RUN groupadd --system --gid 10001 agenttest \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin agenttest
COPY --from=build /opt/agenttest /opt/agenttest
# The deployment package templates are data, not part of the installed wheel:
# packaging.py finds them through AGENTTEST_TEMPLATES_DIR.
COPY templates/package/ /opt/agenttest/templates/package/
# The root filesystem is mounted read-only in the cluster: no .pyc writes,
# HOME and temporary files in /tmp (an emptyDir there).
ENV PATH=/opt/agenttest/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    AGENTTEST_TEMPLATES_DIR=/opt/agenttest/templates/package
WORKDIR /tmp
USER 10001:10001
# 8080: the HTTP port, /metrics and /queue (AGENTTEST_METRICS_PORT);
# 8081: kopf's liveness endpoint /healthz (AGENTTEST_HEALTH_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["agenttest", "run"]
