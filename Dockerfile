# One image for the API, the Celery worker and the one-off services (docker-compose.yml builds it
# once, as clipadapt:latest). torch's PyPI wheels bundle CUDA: a worker uses the GPU the container
# runtime gives it, and runs on the CPU otherwise.
#
# Builds with BuildKit (Compose v2) and with the classic builder (Compose v1's default), and has no
# `# syntax=` line, so nothing but the base image comes from a registry. Layers go from what
# changes least to what changes most: torch (most of the image) is invalidated only when its pins
# in pyproject.toml change, the other dependencies when any dependency changes, the project itself
# on every code change.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS base

# Extra CA certificates (PEM text) for a TLS-intercepting proxy or an internal mirror, e.g.
#   CA_CERTIFICATES="$(cat /usr/local/share/ca-certificates/*.crt)"
# trusted by pip while building and by the services (weights downloads, S3) at run time.
ARG CA_CERTIFICATES=""
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN if [ -n "$CA_CERTIFICATES" ]; then \
        printf '%s\n' "$CA_CERTIFICATES" > /usr/local/share/ca-certificates/clipadapt-extra.crt; \
    fi \
    && update-ca-certificates >/dev/null

# The requirements, split from pyproject.toml: torch/torchvision, then everything else (with the
# build backend and the `deploy` extra). Only the files are copied on, so unrelated edits to
# pyproject.toml leave the torch layer cached.
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb')); \
deps = p['project']['dependencies']; \
heavy = [d for d in deps if d.split('=')[0] in ('torch', 'torchvision')]; \
rest = [d for d in deps if d not in heavy] + p['project']['optional-dependencies']['deploy'] + p['build-system']['requires']; \
open('torch.txt', 'w').write('\n'.join(heavy) + '\n'); \
open('others.txt', 'w').write('\n'.join(rest) + '\n')"

FROM base
# A package index other than PyPI (an internal mirror) and extra indexes.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=""
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CLIPADAPT_DATA_DIR=/data \
    HF_HOME=/models/hf
RUN python3 -m venv /opt/venv
COPY --from=requirements /src/torch.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/torch.txt
COPY --from=requirements /src/others.txt /tmp/requirements/
RUN pip install -r /tmp/requirements/others.txt

# The project, installed like `make install` does (editable, from /app): `clipadapt` is on PATH,
# and /app holds the code, alembic.ini and the migrations.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps --no-build-isolation -e . \
    && python -m compileall -q /app/core /app/api /app/worker \
    && useradd --create-home --uid 10001 clipadapt \
    && mkdir -p /data /models/hf \
    && chown -R clipadapt:clipadapt /data /models
USER clipadapt

EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
