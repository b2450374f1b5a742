# callgate: FastAGI, AMI call control, the HTTP API and /metrics in one process.
# docs/deployment.md explains how docker-compose.yml runs it next to
# PostgreSQL and Asterisk.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed UID, so that volume permissions are the same on every host.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home callgate \
    && install --directory --owner=callgate --group=callgate /var/lib/callgate

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY agi ./agi
COPY api ./api
COPY sql ./sql
COPY data ./data
# The install is editable because sql/ (the migrations) and data/ (the demo
# rate deck) are not package data: engine/ finds them next to itself, in /app.
RUN pip install --editable . \
    && python -m compileall -q engine agi api
COPY contrib/docker-healthcheck.py /usr/local/bin/callgate-healthcheck

# Inside a container, a loopback listener is unreachable from other
# containers, so listen on every address of the container's own network.
ENV CALLGATE_AGI_LISTEN=0.0.0.0:4573 \
    CALLGATE_API_LISTEN=0.0.0.0:8080 \
    CALLGATE_DATA_DIR=/var/lib/callgate

USER callgate
EXPOSE 4573 8080

# `callgate serve` applies the migrations before it opens its listeners, so
# a passing check also means the schema is current.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/callgate-healthcheck"]

# SIGTERM (docker stop) lets callgate finish its FastAGI sessions and close
# its database pool before it exits.
CMD ["callgate", "serve"]
