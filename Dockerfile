# Kiln in a container: the pipeline, its Prefect flows and the trainer.
# The default torch from PyPI is a CUDA build, so the same image trains on GPUs
# (docker run --gpus all ...) and runs the CPU demo anywhere.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    KILN_HOME=/data/kiln-artifacts \
    PREFECT_HOME=/data/prefect

WORKDIR /opt/kiln
COPY pyproject.toml README.md ./
COPY kiln ./kiln
COPY storage ./storage
COPY tasks ./tasks
COPY model ./model
COPY trainer ./trainer
COPY flows ./flows
COPY configs ./configs
COPY prefect.yaml ./

RUN pip install ".[demo]"

VOLUME ["/data"]
CMD ["kiln", "run", "configs/demo.toml"]
