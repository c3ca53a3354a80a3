# skew-sidecar in a small image: `skew-sidecar serve` as a non-root user.
#
#   docker build -t skew-sidecar:0.1.0 .
#   docker run --rm -p 8090:8090 -v "$PWD/baselines:/baselines:ro" \
#       -e SKEW_SIDECAR_BASELINE=churn=/baselines/churn.json skew-sidecar:0.1.0
#
# Every `serve` flag has a SKEW_SIDECAR_<FLAG> variable (README, "Sidecar process").
# Other commands run as `docker run ... skew-sidecar:0.1.0 profile ...`.

# The base: any Debian-like image with Python 3.11+, pip and useradd (the tests build
# on a local Debian bookworm image: `--build-arg PYTHON_IMAGE=...`).
ARG PYTHON_IMAGE=python:3.11-slim

# Wheels for the package and its dependencies, built where a compiler could be added;
# the final stage installs them without build tools or pip's cache.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# setup.py builds the compiled gate where the base image has a C compiler and the
# Python headers; python:3.11-slim has neither, so the image runs the Python gate (the
# sidecar process, the image's command, does not use the gate: it is SkewMiddleware's).
COPY pyproject.toml setup.py README.md ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[serve]'

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin skew
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'skew-sidecar[serve]' \
    && rm -rf /wheels
# 0.0.0.0: Prometheus and mirrors reach the container from outside it (the default,
# 127.0.0.1, would only answer inside the container).
ENV SKEW_SIDECAR_HOST=0.0.0.0 \
    SKEW_SIDECAR_PORT=8090 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8090
ENTRYPOINT ["skew-sidecar"]
CMD ["serve"]
