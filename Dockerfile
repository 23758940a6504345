ARG BASE_IMAGE=python:3.11-slim
# The control plane (`yardarm/control`): the `yardarm` package and its CLI, non-root, on
# a read-only root filesystem. By default it runs the rollout controller
# (`python -m yardarm.local.rollout_controller`) on the stack home mounted at
# /var/lib/yardarm; any other command replaces it, e.g. a one-shot
# `docker run --rm yardarm/control yardarm <command>`.
#
# Built by `yardarm images build` (docs/containers.md), which puts in the build context
# this file and a `wheels/` folder holding every workspace wheel (the control plane
# imports the services' settings), the locked third-party wheels for CPython 3.11 on
# manylinux x86_64, and a pip wheel: nothing is fetched from an index while building.
# `--build-arg BASE_IMAGE=yardarm/base:bookworm` builds from the Debian base made with
# debootstrap when no registry is reachable. Larger than a service image: the rollout
# judge's statistics need scipy (and numpy).
#
# Run-time settings:
#   /var/lib/yardarm           the stack home (YARDARM_HOME): topology.json, credentials/,
#                              certificates/ as `yardarm up` writes them; the controller
#                              keeps its rollouts in the stack's datastore
#   YARDARM_ROLLOUTS_*         the controller's tuning (rollout_controller.ControllerSettings),
#                              e.g. YARDARM_ROLLOUTS_WEBHOOK_URL
#   OTEL_EXPORTER_OTLP_ENDPOINT           where spans go (span files are off)
# The controller serves its API on the stack's base port + 46 (8126 by default).
#
# Runs with `docker run --read-only`: the venv is byte-compiled at build time, span files
# are off, and the only place written is the volume /var/lib/yardarm.

# Build stage: a venv holding the `yardarm` wheel and what its package metadata requires,
# resolved by pip from the wheelhouse alone (--no-index). pip runs from its wheel and is
# not left in the venv. numpy's and scipy's own test suites (50 MB) are left out. The
# controller and the judge's statistics (scipy) are imported once, so a wheel that
# cannot load fails the build, not the start.
FROM ${BASE_IMAGE} AS build
COPY wheels/ /wheels/
RUN set -eu; \
    python3 -m venv --without-pip /opt/yardarm; \
    set -- /wheels/pip-*.whl; \
    /opt/yardarm/bin/python "$1/pip" install --no-index --find-links /wheels \
        --no-cache-dir --no-compile --disable-pip-version-check --no-warn-script-location \
        yardarm; \
    site=/opt/yardarm/lib/python3.11/site-packages; \
    find "$site/numpy" "$site/scipy" -type d -name tests -prune -exec rm -rf {} +; \
    /opt/yardarm/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/yardarm; \
    /opt/yardarm/bin/python -c 'import yardarm.cli, yardarm.local.rollout_controller, scipy.stats'

# Final stage: the same base and the venv, nothing else from the build (no wheels, no pip,
# no caches). uid 10001 owns only the state volume.
FROM ${BASE_IMAGE}
RUN set -eu; \
    groupadd --system --gid 10001 yardarm; \
    useradd --system --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /var/lib/yardarm --shell /usr/sbin/nologin yardarm; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/yardarm
COPY --from=build /opt/yardarm /opt/yardarm
ENV PATH=/opt/yardarm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    YARDARM_HOME=/var/lib/yardarm \
    YARDARM_SPAN_FILES=false
VOLUME /var/lib/yardarm
WORKDIR /var/lib/yardarm
USER 10001:10001
EXPOSE 8126
# The controller's /healthz, on the port the stack's topology gives it (base port + 46;
# https when the stack runs TLS), with the venv's python: a slim base has no curl.
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
    CMD ["/opt/yardarm/bin/python", "-c", "import json, os, ssl, urllib.request as u; t = json.load(open(os.path.join(os.environ['YARDARM_HOME'], 'topology.json'))); s = 'https' if t.get('tls', {}).get('enabled') else 'http'; u.urlopen('%s://127.0.0.1:%d/healthz' % (s, t.get('base_port', 8080) + 46), timeout=1.5, context=ssl._create_unverified_context())"]
CMD ["python", "-m", "yardarm.local.rollout_controller", "--home", "/var/lib/yardarm"]
