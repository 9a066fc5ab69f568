# The gateway as a container image: a non-root user, $PORT (default 8000),
# a health check on /readyz, and a drain on SIGTERM (uvicorn is PID 1: the
# command is the Procfile's, exec'd by sh). docs/deploy.md tells the rest.
#
#   docker build -t realtime-gateway .
#   podman build --format docker --build-arg BASE_IMAGE=<a python 3.11+ image> -t realtime-gateway .
#
# BASE_IMAGE: any image with `python` 3.11 or later and its venv module.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# An index or proxy that pip must use inside the build, when the build
# cannot reach PyPI directly (HTTP_PROXY and HTTPS_PROXY are Docker's own
# build arguments and reach pip unasked).
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The dependencies in a layer of their own: a change of code rebuilds from here on only.
COPY requirements.txt /src/requirements.txt
RUN pip install ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} \
        ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} \
        -r /src/requirements.txt
COPY . /src
WORKDIR /src
# The gateway as a package (its static files and Lua inside it); its
# dependencies are the layer above, pinned as on the Procfile's platform.
RUN pip install ${PIP_INDEX_URL:+--index-url "$PIP_INDEX_URL"} \
        ${PIP_EXTRA_INDEX_URL:+--extra-index-url "$PIP_EXTRA_INDEX_URL"} \
        --no-deps . && mkdir /app
# pip and setuptools serve the build only: 25 MB the image need not carry.
RUN pip uninstall -y -q pip setuptools

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY deploy/healthcheck.py /app/healthcheck.py
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin gateway
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8000
# websockets' documented line limit, as the Procfile sets it (docs/routes.md: 414/431).
ENV WEBSOCKETS_MAX_LINE_LENGTH=65536
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
# Ready only while the broker link delivers; 503 while draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
# The Procfile's command (tests/test_container.py checks they agree): exec
# makes uvicorn PID 1, so SIGTERM reaches it and starts the drain.
CMD ["sh", "-c", "exec uvicorn gateway.app:app --host 0.0.0.0 --port $PORT --loop gateway.server.loop:GreedyAcceptLoop --http gateway.server.protocol:GatewayHttpProtocol --no-access-log --proxy-headers --forwarded-allow-ips '*' --ws-per-message-deflate false --ws-max-size ${GATEWAY_WS_MAX_FRAME_BYTES:-131072} --ws-ping-interval ${GATEWAY_HEARTBEAT:-15} --ws-ping-timeout ${GATEWAY_HEARTBEAT:-15} --timeout-graceful-shutdown ${GATEWAY_SHUTDOWN_GRACE:-10}"]
