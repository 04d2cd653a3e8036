# One image for every homelab service; the command picks the service (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HOMELAB_STATE_DIR=/data/state HOMELAB_LOG_DIR=/data/logs HOMELAB_CONFIG=/app/config/homelab.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY shared ./shared
COPY router_client ./router_client
COPY config ./config
COPY mosquitto ./mosquitto
COPY scripts ./scripts
RUN pip install . && useradd --system --uid 10001 --home /data homelab && mkdir -p /data && chown homelab /data

USER homelab
VOLUME ["/data"]
CMD ["homelab", "--help"]
