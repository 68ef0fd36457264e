# Kiln in a container: the pipeline's Prefect flows, the trainer, and a CUDA build of torch.
#
#   docker build -t kiln .
#   docker run --rm --gpus all -v kiln-data:/data kiln        # the demo pipeline flow (also runs without a GPU)
#   docker compose up -d                                      # Prefect server + worker on the GPU (docker-compose.yml)
#
# torch comes from PyPI, whose Linux x86_64 wheels are CUDA builds that bring their own
# CUDA runtime (the nvidia-* wheels): the host needs only the NVIDIA driver and the
# container toolkit, not a CUDA base image, and the same image runs the CPU demo.
# Lint: hadolint Dockerfile (settings in .hadolint.yaml).
FROM python:3.11-slim-bookworm

# Build-time choices: the torch release, and Kiln's extras (add s3 for an object-store KILN_HOME).
ARG TORCH_VERSION=2.13.0
ARG KILN_EXTRAS=demo

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    KILN_HOME=/data/kiln-artifacts \
    KILN_CACHE_DIR=/data/cache \
    PREFECT_HOME=/data/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# torch alone first: ~3 GB that changes far less often than Kiln, so code edits reuse this layer.
RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /opt/kiln
COPY pyproject.toml README.md ./
COPY kiln ./kiln
COPY storage ./storage
COPY tasks ./tasks
COPY model ./model
COPY trainer ./trainer
COPY flows ./flows
COPY cli ./cli
COPY configs ./configs
COPY prefect.yaml ./

# Kiln itself, from this checkout: its versions are pinned in pyproject.toml, not here.
# hadolint ignore=DL3013
RUN pip install ".[${KILN_EXTRAS}]" \
    && useradd --create-home --uid 1000 kiln \
    && mkdir -p /data \
    && chown kiln:kiln /data

# Flows and trainers never need root; /data (artifacts, Prefect's database, caches) is theirs.
# Numeric, so a volume's owner on the host matches (uid 1000 = the kiln user created above).
USER 1000:1000
VOLUME ["/data"]
CMD ["kiln", "run", "configs/demo.toml"]
