# BridgeNet image. CPU by default; for CUDA:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 .
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libusb-1.0-0 libgomp1 git \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 bridgenet
WORKDIR /home/bridgenet/app
COPY --chown=bridgenet:bridgenet . .
RUN pip install --no-cache-dir .

USER bridgenet
CMD ["dvc", "repro"]
