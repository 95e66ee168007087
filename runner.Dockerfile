# The runner image: what runs inside an execution, `python -m agenttest.runner` (the judge, which starts the agent host).
#
#   docker build -f runner.Dockerfile -t agenttest/runner:0.1.0 .
#
# The fargate backend runs it as the `runner` container of the task definition
# `agenttest-runner` (infrastructure/), the pod backend as a Pod. Both run it
# as uid 10001 with a read-only root filesystem and a scratch volume at /tmp.
#
# The harness needs strands-agents and the standard library only, so the image
# holds the project's package without its dependencies (no kopf, no Kubernetes
# client: less to pull at every task start, less within reach of the untrusted
# agent code) plus strands-agents[ollama], strands-agents-evals (the
# evaluators) and jsonschema. Two stages, as in ./Dockerfile: the
# final stage copies only the virtual environment, whose python links to the
# base image's interpreter, so both stages use the same base.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Keep in step with the strands-agents requirement in pyproject.toml.
ARG STRANDS_REQUIREMENT="strands-agents[ollama]>=1.0 strands-agents-evals>=1.7,<2 jsonschema>=4.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/runner
WORKDIR /src
# What `pip install .` needs (pyproject.toml names README.md as the readme);
# .dockerignore keeps everything else out of the context.
COPY pyproject.toml README.md ./
# The development kit (operator/agenttest_dev) is neither in the context
# (.dockerignore) nor in the wheel (pyproject.toml's packages include).
COPY operator/ operator/
RUN /opt/runner/bin/pip install ${STRANDS_REQUIREMENT} \
    && /opt/runner/bin/pip install --no-deps . \
    && /opt/runner/bin/python -c "import strands, agenttest.runner.judge, agenttest.runner.agenthost" \
    && /opt/runner/bin/python -m compileall -q /opt/runner/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="agenttest-runner" \
      org.opencontainers.image.description="Test harness that runs an AgentTest's cases against a Strands agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001: the task definition's `user` and the pod's runAsUser.
# /tmp is world-writable with the sticky bit; the VOLUME below carries that
# mode into the task's scratch volume (see there).
RUN groupadd --system --gid 10001 agenttest \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin agenttest \
    && chmod 1777 /tmp
COPY --from=build /opt/runner /opt/runner
# Read-only root: no .pyc writes, no pip cache; HOME, pip's temporary files and
# the harness's workdir (agent.py, extra requirements in ./site) live in /tmp.
# The harness installs extra requirements with the venv's pip at run time, so
# pip stays in the image.
ENV PATH=/opt/runner/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# On Fargate a task volume mounted at a path that the image declares as a
# VOLUME starts with that path's contents and mode (1777 here); without it the
# volume would be root-owned 0755 and uid 10001 could not write to it. A Pod's
# emptyDir at /tmp is writable anyway; Kubernetes ignores VOLUME.
VOLUME ["/tmp"]
# /tmp itself, not a directory below it: a mount point at /tmp always exists,
# a subdirectory would not on an empty volume.
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "agenttest.runner"]
