# One image for all three services; the command picks the service (`rtrl gateway|inference|learner`).
# They share the rtrl library, the generated contracts and torch, so one image builds once, caches
# once and is pulled once per host; per-service images would be three copies of the same ~1 GB.
#
#   docker build -t rtrl .                                                   # CPU torch (default)
#   docker build -t rtrl:cu128 --build-arg TORCH_VARIANT=cu128 .             # a CUDA build of torch
#
# BASE_IMAGE is overridable so the image builds where no registry is reachable (scripts/compose-smoke
# imports a debootstrap'ed Debian bookworm). The one thing asked of a base: `python3` 3.11+ with its
# venv module, as the official python images and Debian's python3 + python3-venv have. Both stages
# use the same base because the virtual environment points at the base's interpreter.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
LABEL org.opencontainers.image.title=rtrl
ARG TORCH_VERSION=2.13.0
# cpu, or the CUDA build matching your driver (cu126, cu128, ...): both select the wheel and its index.
ARG TORCH_VARIANT=cpu
# Empty: torch only from wheels/ and PyPI (scripts/compose-smoke, on machines that cannot reach it).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=60
RUN python3 -m venv /opt/rtrl
ENV PATH=/opt/rtrl/bin:$PATH
# wheels/ holds only a README unless you put wheels there; pip prefers them to downloading (e.g. a
# torch wheel you already have: the CUDA ones are several GB).
COPY wheels/ /wheels/
# torch first and on its own layer: it is the big one and changes least.
RUN pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}"
COPY pyproject.toml README.md /src/
COPY rtrl /src/rtrl
COPY services /src/services
RUN pip install --find-links /wheels /src && rtrl --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=rtrl
# A fixed uid so volumes and Kubernetes' fsGroup can name it; /checkpoints is owned by it so a fresh
# named volume mounted there is writable by the learner.
RUN useradd --create-home --uid 10001 --user-group rtrl \
    && mkdir /checkpoints && chown rtrl:rtrl /checkpoints
COPY --from=build /opt/rtrl /opt/rtrl
ENV PATH=/opt/rtrl/bin:$PATH PYTHONUNBUFFERED=1 RTRL_CHECKPOINT_DIR=/checkpoints
USER 10001:10001
WORKDIR /home/rtrl
# gateway, learner, first inference port; publishing them is the orchestrator's decision.
EXPOSE 50051 50052 50061 8050
ENTRYPOINT ["rtrl"]
CMD ["--help"]
