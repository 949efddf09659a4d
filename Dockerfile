# sessionkeeper: the daemon, Playwright's Chromium and tini in one image.
# Build: docker build -t sessionkeeper .
# Run:   docker run -e DATABASE_URL=postgresql://... -p 8080:8080 sessionkeeper
FROM python:3.11-slim-bookworm

ARG UV_VERSION=0.13.9

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PLAYWRIGHT_BROWSERS_PATH=/ms-playwright

# tini is PID 1: it forwards SIGTERM to sessionkeeper (only to it, so the daemon closes
# Chromium itself before its final snapshot) and reaps Chromium's exited children.
# Unpinned: Debian's security updates replace exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && pip install "uv==${UV_VERSION}"

WORKDIR /app

# Locked dependencies first, so code changes reuse this layer and the Chromium below.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# Playwright's Chromium (the version this Playwright drives) and its system packages.
RUN /app/.venv/bin/playwright install --with-deps chromium \
    && rm -rf /var/lib/apt/lists/* \
    && chmod -R a+rX "${PLAYWRIGHT_BROWSERS_PATH}"

# The project itself; the wheel carries migrations/ as app/_migrations.
COPY app ./app
COPY migrations ./migrations
RUN uv sync --frozen --no-dev --no-editable

# An unprivileged user owning the profile and the local state.
RUN groupadd --system --gid 10001 sessionkeeper \
    && useradd --system --uid 10001 --gid sessionkeeper --create-home \
        --home-dir /home/sessionkeeper --shell /usr/sbin/nologin sessionkeeper \
    && mkdir -p /data/profile /data/state \
    && chown -R sessionkeeper:sessionkeeper /data

ENV PATH="/app/.venv/bin:${PATH}" \
    HOME=/home/sessionkeeper \
    SESSIONKEEPER_PROFILE_DIR=/data/profile \
    SESSIONKEEPER_DATA_DIR=/data/state

USER 10001:10001
EXPOSE 8080

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sessionkeeper", "run"]
