# syntax=docker/dockerfile:1
# The imgsearch image: `imgsearch worker` and `imgsearch serve` (docker-compose.yml runs both
# against a Chroma server). Model weights go into the image at build time, so containers start
# with no network at all:
#   - efficientnet-lite0: its ImageNet weights ship inside a pip package (always baked in);
#   - resnet50 (optional): `docker compose build --build-arg RESNET50=download` fetches torchvision's
#     IMAGENET1K_V1 checkpoint into torch's cache (TORCH_HOME) while building.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/torch
WORKDIR /app

# CPU wheels: the default PyPI torch bundles CUDA libraries (gigabytes) that this image never uses
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY imgsearch ./imgsearch
COPY core ./core
COPY ingest ./ingest
COPY search ./search
COPY dupes ./dupes
COPY reports ./reports
COPY service ./service
COPY evaluation ./evaluation
COPY cli ./cli
RUN pip install ".[efficientnet,serve]"

ARG RESNET50=none
RUN if [ "$RESNET50" = download ]; then \
      python -c "from torchvision.models import ResNet50_Weights as W; W.IMAGENET1K_V1.get_state_dict(check_hash=True)"; \
    fi
# Prove the offline start now rather than at 3 a.m.: build the models with the network switched off.
RUN --network=none python -c "from imgsearch.core.backbones import load_embedder; load_embedder('efficientnet-lite0')" \
 && if [ "$RESNET50" = download ]; then \
      python -c "from imgsearch.core.backbones import load_embedder; load_embedder('resnet50')"; \
    fi

RUN useradd --create-home --uid 10001 imgsearch && mkdir /status && chown imgsearch /status
USER imgsearch
EXPOSE 8080
ENTRYPOINT ["imgsearch"]
CMD ["--help"]
