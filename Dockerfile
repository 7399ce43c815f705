# One image for the API, the Celery worker and the migration job (see docker-compose.yml).
# torch's PyPI wheels bundle CUDA: the worker uses the GPU the container runtime gives it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    CLIPADAPT_DATA_DIR=/data \
    HF_HOME=/models/hf

WORKDIR /app

# Dependencies first (from pyproject.toml), so code changes do not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY scripts ./scripts

RUN useradd --create-home --uid 10001 clipadapt \
    && mkdir -p /data /models/hf \
    && chown -R clipadapt:clipadapt /data /models
USER clipadapt

EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
