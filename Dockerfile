# Two images from one file; the command picks the service (`rtrl gateway|inference|learner|dashboard`).
#
#   docker build -t rtrl .                                                   # every service (CPU torch)
#   docker build -t rtrl-gateway --target gateway .                          # gateway and dashboard: no torch
#   docker build -t rtrl:cu128 --build-arg TORCH_VARIANT=cu128 .             # a CUDA build of torch
#
# Layers, so that a code change rebuilds and ships only the code (docs/deployment.md has the sizes):
# the dependencies are installed from the lists scripts/requirements makes of pyproject.toml, in stages
# that only a change of those lists or of wheels/ rebuilds; the final stages copy that virtual
# environment, then install the rtrl wheel (a few hundred KB) on top without dependencies.
#
# BASE_IMAGE is overridable so the image builds where no registry is reachable (scripts/compose-smoke
# imports a debootstrap'ed Debian bookworm). The one thing asked of a base: `python3` 3.11+ with its
# venv module, as the official python images and Debian's python3 + python3-venv have. Every stage
# uses the same base because the virtual environment points at the base's interpreter.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

# -- the requirement lists, from pyproject.toml: the dependency stages below copy only these, so an edit
#    of pyproject.toml that leaves the dependencies alone (a tool's settings) rebuilds nothing big
FROM ${BASE_IMAGE} AS requirements
LABEL org.opencontainers.image.title=rtrl
COPY pyproject.toml scripts/requirements /deps/
RUN python3 /deps/requirements --pyproject /deps/pyproject.toml atari gameboy desktop > /deps/gateway.txt \
    && python3 /deps/requirements --pyproject /deps/pyproject.toml --without-torch learner atari gameboy desktop \
        > /deps/all.txt

# -- dependencies of the gateway and the dashboard: no torch -------------------------------------------
FROM ${BASE_IMAGE} AS deps-gateway
LABEL org.opencontainers.image.title=rtrl
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60
RUN python3 -m venv /opt/rtrl
ENV PATH=/opt/rtrl/bin:$PATH
# wheels/ holds only a README unless you put wheels there; pip prefers them to downloading (e.g. a
# torch wheel you already have: the CUDA ones are several GB).
COPY wheels/ /wheels/
COPY --from=requirements /deps/gateway.txt /deps/
RUN pip install --find-links /wheels -r /deps/gateway.txt

# -- dependencies of every service: the above, torch, and the learner's ---------------------------------
FROM deps-gateway AS deps
ARG TORCH_VERSION=2.13.0
# cpu, or the CUDA build matching your driver (cu126, cu128, ...): both select the wheel and its index.
ARG TORCH_VARIANT=cpu
# Empty: torch only from wheels/ and PyPI (scripts/compose-smoke, on machines that cannot reach it).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"
COPY --from=requirements /deps/all.txt /deps/
RUN pip install --find-links /wheels -r /deps/all.txt

# -- the rtrl wheel: the code, built once for both images ---------------------------------------------
FROM deps-gateway AS code
COPY pyproject.toml README.md /src/
COPY rtrl /src/rtrl
RUN pip wheel --no-deps --find-links /wheels --wheel-dir /dist /src

# -- what both images share: the user and the checkpoint directory -------------------------------------
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title=rtrl
# A fixed uid so volumes and Kubernetes' fsGroup can name it; /checkpoints is owned by it so a fresh
# named volume mounted there is writable by the learner.
RUN useradd --create-home --uid 10001 --user-group rtrl \
    && mkdir /checkpoints && chown rtrl:rtrl /checkpoints
ENV PATH=/opt/rtrl/bin:$PATH PYTHONUNBUFFERED=1 RTRL_CHECKPOINT_DIR=/checkpoints \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /home/rtrl
ENTRYPOINT ["rtrl"]
CMD ["--help"]

# -- the gateway and the dashboard (--target gateway) ---------------------------------------------------
FROM runtime AS gateway
COPY --from=deps-gateway /opt/rtrl /opt/rtrl
COPY --from=code /dist /dist
RUN pip install --no-deps --no-index /dist/*.whl && rm -rf /dist && rtrl --version
USER 10001:10001
EXPOSE 50051 8050

# -- every service (the default target) ---------------------------------------------------------------
FROM runtime AS full
COPY --from=deps /opt/rtrl /opt/rtrl
COPY --from=code /dist /dist
RUN pip install --no-deps --no-index /dist/*.whl && rm -rf /dist && rtrl --version
USER 10001:10001
# gateway, learner, first inference port, dashboard; publishing them is the orchestrator's decision.
EXPOSE 50051 50052 50061 8050
