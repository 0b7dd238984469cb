# Stepgate in front of the demo bank API, as `stepgate demo` runs it, on 0.0.0.0:8080
# (docker/README.md):
#
#   docker build -t stepgate . && docker run --rm -p 8080:8080 -v stepgate-data:/app/data stepgate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Every dependency at the version constraints.txt pins (refreshing it: its header).
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
RUN pip install --no-cache-dir -c constraints.txt . \
    && groupadd --system --gid 10001 stepgate \
    && useradd --system --uid 10001 --gid stepgate --home-dir /app --no-create-home stepgate \
    && mkdir /app/data && chown stepgate:stepgate /app/data && chmod 700 /app/data

COPY policies ./policies
COPY demo ./demo
COPY docker/config.yaml docker/entrypoint.sh ./docker/

# The store and, unless their variables are set, the keys written on the first start.
VOLUME ["/app/data"]
# Numeric, so that orchestrators can tell it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001
ENV STEPGATE_CONFIG=/app/docker/config.yaml \
    STEPGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080

# GET {prefix}/config answers without credentials and without the store.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['STEPGATE_LISTEN'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/.stepgate/config', timeout=3)"]

# No command: serve. Any command is run once the keys exist: `docker run ... stepgate check`.
ENTRYPOINT ["/bin/sh", "/app/docker/entrypoint.sh"]
CMD []
