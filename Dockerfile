FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && useradd --system --home /app stepgate && mkdir /data \
    && chown stepgate /data
COPY config.example.yaml ./
COPY policies ./policies
USER stepgate
ENV STEPGATE_CONFIG=/app/config.yaml
EXPOSE 8080
# Mount a config at /app/config.yaml (listen: 0.0.0.0:8080, store: sqlite:////data/stepgate.db)
# and pass STEPGATE_KEYS and STEPGATE_DATA_KEYS from a secret store.
CMD ["stepgate", "run"]
