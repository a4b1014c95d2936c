# sipedge container image: `docker build -t sipedge .` (docker-compose.yml builds it too).
#
# Two stages from the same base: the build stage makes the venv at /opt/sipedge and
# `pip install .` (a regular install, no editable, no test extras) into it, which compiles
# the sans-I/O core with mypyc (setup.py; gcc and libc6-dev are installed for it, in this
# stage only); the runtime stage copies only that venv, so no source tree, build backend,
# compiler or pip cache ends up in the image.
# The venv works after the copy because both stages have the same interpreter at the same
# path (/usr/local/bin/python3.11).
#
# The config is not part of the image: mount it at /etc/sipedge (docker-compose.yml does).
# conf/sipedge.toml is copied to /usr/share/doc/sipedge/ only as the annotated reference.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# README.md is the package's readme (pyproject.toml), so setuptools needs it to build.
COPY pyproject.toml README.md setup.py ./
COPY sipedge ./sipedge
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m venv /opt/sipedge \
    && /opt/sipedge/bin/pip install . \
    && /opt/sipedge/bin/sipedge --version \
    && /opt/sipedge/bin/python -P -c 'import sipedge; print(sipedge.core_build())'

FROM python:3.11-slim
# A fixed uid/gid so the mounted config can be made readable to it on the host
# (chgrp 10001, or compose `group_add` with the host group that owns /etc/sipedge).
ARG SIPEDGE_UID=10001
RUN groupadd --system --gid "${SIPEDGE_UID}" sipedge \
    && useradd --system --uid "${SIPEDGE_UID}" --gid sipedge --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sipedge \
    && install -d -m 0755 /etc/sipedge /usr/share/doc/sipedge
COPY --from=build /opt/sipedge /opt/sipedge
COPY conf/sipedge.toml conf/lab.toml /usr/share/doc/sipedge/
# Unbuffered stdio: log lines reach `docker logs` as they are written. SIPEDGE_ADMIN is the
# `[admin] listen` the HEALTHCHECK asks (127.0.0.1:9091 in conf/lab.toml and sipedge.toml);
# set it when the config listens elsewhere.
ENV PATH=/opt/sipedge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIPEDGE_ADMIN=127.0.0.1:9091
USER sipedge

# SIP on 5060 (UDP and TCP) and 5061 (TLS), the admin/metrics HTTP listener on 9091. With
# `network_mode: host` (docker-compose.yml) these are documentation only: sipedge binds the
# addresses its config names, on the host's own interfaces.
EXPOSE 5060/udp 5060/tcp 5061/tcp 9091/tcp

# Liveness: the admin /healthz answers 200 while the event loop runs (it says nothing about
# gateways: /readyz does that, and a drain makes /readyz 503 on purpose, which must not get
# the container restarted). No curl in the slim image: the venv's Python asks.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/sipedge/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://%s/healthz' % os.environ.get('SIPEDGE_ADMIN', '127.0.0.1:9091'), timeout=2)"]

# SIGTERM drains: new calls get 503 with Retry-After, calls in progress carry on until they
# end or `[daemon] drain_timeout_s` (30 s by default) passes, then sipedge exits 0. The
# engine's stop timeout (`stop_grace_period` in compose, `docker stop -t`) must exceed
# drain_timeout_s, or SIGKILL cuts the drain short: docker-compose.yml sets 45s. sipedge
# installs its own SIGTERM/SIGINT/SIGHUP handlers, so it behaves as PID 1.
STOPSIGNAL SIGTERM

ENTRYPOINT ["/opt/sipedge/bin/sipedge"]
CMD ["run", "--config", "/etc/sipedge/sipedge.toml"]
