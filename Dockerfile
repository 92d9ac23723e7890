# BridgeNet image: the package with its Debian needs, run as a non-root user; the default
# command runs the whole pipeline (dvc repro) on the embedded synthetic data.
#   docker build -t bridgenet .
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t bridgenet:cuda .
# (a CUDA base image must provide python3 >= 3.10 with pip and venv)
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# open3d needs libusb at import time; dvc needs git; torch needs libgomp.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0 libgomp1 git python3-venv \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 bridgenet
WORKDIR /home/bridgenet/app
COPY --chown=10001:10001 . .
RUN python3 -m venv /opt/venv && pip install --no-cache-dir .

USER 10001
# A fresh repository for DVC's bookkeeping when the build context had no .git.
RUN git config --global user.email bridgenet@localhost && git config --global user.name bridgenet \
    && (git rev-parse --git-dir >/dev/null 2>&1 || (git init -q && git add -A && git commit -qm image))
EXPOSE 5001
CMD ["python", "-m", "flows.local_server", "--", "dvc", "repro"]
