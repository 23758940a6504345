"""The gateway benchmark's setup: the backends, the load, and each target's configuration.

nginx, HAProxy and the gateway are configured here from one set of ports, so the three
always see the same backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from bench.loopback import LOOPBACK

BENCHMARK = "gateway"
BODY = b"yardarm-bench:" + b"x" * 113 + b"\n"  # 128 bytes
MAX_CONNECTIONS = 64
PACED_CONNECTIONS = 32
BACKENDS = 3

Scaling = Literal["workers", "reuse_port"]

# Other configurations of the gateway on one core, each against HAProxy on one core:
# the HTTP client of the hot path the gateway did not choose, and the trace sampling a
# production deployment would set (the default traces every request).
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("aiohttp upstream client", {"YARDARM_GATEWAY_UPSTREAM_HTTP": "aiohttp"}),
    (
        "1% trace sampling",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
]


def nginx_config(ports: list[int]) -> str:
    text = BODY.decode().removesuffix("\n")
    servers = "\n".join(
        f"    server {{ listen {LOOPBACK}:{port} backlog=4096; "
        f'location / {{ return 200 "{text}\\n"; }} }}'
        for port in ports
    )
    return f"""worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
{servers}
}}
"""


def haproxy_config(port: int, backend_ports: list[int], nbthread: int) -> str:
    servers = "\n".join(
        f"    server b{i} {LOOPBACK}:{p}" for i, p in enumerate(backend_ports, start=1)
    )
    return f"""global
    nbthread {nbthread}
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always

frontend bench
    bind {LOOPBACK}:{port}
    default_backend nginx

backend nginx
    balance roundrobin
{servers}
"""


def gateway_scaling() -> Scaling | None:
    """How this gateway spreads over several cores, read from its settings model.

    A `workers` setting runs several processes itself; without it, `reuse_port` lets
    the benchmark start several processes on one port (SO_REUSEPORT).
    """
    from yardarm_gateway.settings import GatewaySettings

    fields = GatewaySettings.model_fields
    if "workers" in fields:
        return "workers"
    if "reuse_port" in fields:
        return "reuse_port"
    return None


def gateway_env(
    port: int, backend_ports: list[int], state_dir: Path, instance: str, **extra: str
) -> dict[str, str]:
    """The environment the local runtime gives a gateway, routing "/" to the backends."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("YARDARM_", "OTEL_"))  # no stray config, no span export
    }
    settings = {
        "HOST": LOOPBACK,
        "PORT": str(port),
        "INSTANCE": instance,
        "STATE_DIR": str(state_dir),
        "LOG_LEVEL": "INFO",
        "ROUTES": json.dumps([{"prefix": "/", "upstream": "bench"}]),
        "UPSTREAMS": json.dumps({"bench": [f"http://{LOOPBACK}:{p}" for p in backend_ports]}),
        "STRIP_PREFIX": "",
        **extra,
    }
    env.update({f"YARDARM_GATEWAY_{key}": value for key, value in settings.items()})
    return env
