# One image for all three services (the command picks the service): they share the rtrl library,
# torch and the generated contracts, so one image builds once and caches once.
# BASE_IMAGE is overridable so that the image builds where no registry is reachable.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# CPU build of PyTorch by default; pass --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# for a CUDA variant.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
RUN python -m venv /opt/rtrl
ENV PATH=/opt/rtrl/bin:$PATH
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY rtrl /src/rtrl
COPY services /src/services
RUN pip install --no-cache-dir /src

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 rtrl && mkdir /checkpoints && chown rtrl /checkpoints
COPY --from=build /opt/rtrl /opt/rtrl
ENV PATH=/opt/rtrl/bin:$PATH PYTHONUNBUFFERED=1 RTRL_CHECKPOINT_DIR=/checkpoints
USER rtrl
WORKDIR /home/rtrl
ENTRYPOINT ["rtrl"]
