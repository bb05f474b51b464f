# Image for the production shape in docker-compose.yml (worker and gateway processes).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models models
COPY adapters adapters
COPY mappings mappings
COPY activities activities
COPY workflows workflows
COPY workers workers
RUN pip install --no-cache-dir '.[postgres]'
USER nobody
ENTRYPOINT []
