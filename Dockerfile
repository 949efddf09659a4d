# sessionkeeper: the daemon, Playwright's Chromium and tini in one image.
# Build: docker build -t sessionkeeper .
# Run:   docker run -e DATABASE_URL=postgresql://... -p 8080:8080 sessionkeeper
# Size:  scripts/image-size (this Dockerfile against the one of a git revision)
#
# Three stages: `deps` resolves nothing and installs the locked dependencies (uv stays there),
# `project` installs sessionkeeper itself on top, and the runtime stage takes the dependencies,
# installs Chromium once, and takes only the project's own files last. A change to the code or
# to README.md rebuilds the last layer alone; only pyproject.toml or uv.lock rebuild the rest.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps

ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /app

# Only what `uv sync --no-install-project` reads: a README or code edit leaves this layer, the
# dependencies below and Chromium in the runtime stage cached. --locked: a uv.lock that no
# longer matches pyproject.toml fails the build instead of being used as it is.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project


FROM deps AS project

# The project itself (README.md is its long description; the wheel carries migrations/ as
# app/_migrations), installed as a wheel, then set apart in /project under the same paths:
# the runtime stage copies that tree alone, not the dependencies a second time.
COPY README.md ./
COPY app ./app
COPY migrations ./migrations
RUN uv sync --locked --no-dev --no-editable \
    && site="$(/app/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && mkdir -p "/project${site}" /project/app/.venv/bin \
    && cp -a "${site}/app" "${site}"/sessionkeeper-*.dist-info "/project${site}/" \
    && cp -a /app/.venv/bin/sessionkeeper /project/app/.venv/bin/


FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PLAYWRIGHT_BROWSERS_PATH=/ms-playwright

# tini is PID 1: it forwards SIGTERM to sessionkeeper (only to it, so the daemon closes
# Chromium itself before its final snapshot) and reaps Chromium's exited children.
# Unpinned: Debian's security updates replace exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The locked dependencies, without uv or pip's caches.
COPY --from=deps /app/.venv /app/.venv

# Playwright's Chromium (the version this Playwright drives) and its system packages. The
# daemon runs Chromium's new headless mode; --no-shell leaves out the separate headless shell,
# which it never starts.
RUN /app/.venv/bin/playwright install --with-deps --no-shell chromium \
    && rm -rf /var/lib/apt/lists/* \
    && chmod -R a+rX "${PLAYWRIGHT_BROWSERS_PATH}"

# An unprivileged user owning the profile and the local state.
RUN groupadd --system --gid 10001 sessionkeeper \
    && useradd --system --uid 10001 --gid sessionkeeper --create-home \
        --home-dir /home/sessionkeeper --shell /usr/sbin/nologin sessionkeeper \
    && mkdir -p /data/profile /data/state \
    && chown -R sessionkeeper:sessionkeeper /data

ENV PATH="/app/.venv/bin:${PATH}" \
    HOME=/home/sessionkeeper \
    SESSIONKEEPER_PROFILE_DIR=/data/profile \
    SESSIONKEEPER_DATA_DIR=/data/state \
    SESSIONKEEPER_IMAGE=1

# Last: the project's own files (package, metadata, the `sessionkeeper` command).
COPY --from=project /project/ /

USER 10001:10001
EXPOSE 8080

# For plain `docker run` (Railway and Render probe /healthz themselves): alive while the
# process answers on PORT. Python, as the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sessionkeeper", "run"]
