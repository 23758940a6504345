"""`python -m yardarm.local.rollout_controller --home HOME`: the local stack's rollout
controller, run by the supervisor like the chaos controller, until SIGTERM.

It serves the rollout API (`yardarm.rollout.api`) on `base+46` behind the admin token,
keeps rollouts in the stack's datastore, and changes the stack through the local target's
effects (`yardarm.local.rollout_effects`). Its `/metrics` (the rollout series of
`yardarm.rollout.telemetry`) is scraped by the stack's Prometheus; with
`YARDARM_ROLLOUTS_WEBHOOK_URL` set it also posts rollout events to that Slack-compatible
webhook.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from yardarm.rollout.settings import ControllerSettings

__all__ = ["ControllerSettings", "main"]

INSTANCE = "rollouts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m yardarm.local.rollout_controller",
        description="Run a local stack's rollout controller.",
    )
    parser.add_argument("--home", type=Path, required=True, help="the stack's state directory")
    args = parser.parse_args(argv)
    home: Path = args.home.resolve()
    try:
        tuning = ControllerSettings()
    except ValidationError as exc:
        for error in exc.errors():  # never the input: a webhook URL's path is a secret
            name = "_".join(str(part) for part in error["loc"]).upper()
            print(f"YARDARM_ROLLOUTS_{name}: {error['msg']}", file=sys.stderr)
        return 2

    # Imported here: aiohttp, the kit and the engine only once the arguments are good.
    from yardarm_kit import Service, ServiceSettings

    from yardarm.certificates import StackCertificates
    from yardarm.control_kv import ControlKv
    from yardarm.credentials import StackCredentials
    from yardarm.local.desired import read_topology
    from yardarm.local.render import LOOPBACK
    from yardarm.local.rollout_effects import LocalEffects
    from yardarm.rollout.serving import serve_rollouts

    # One line per smoke request and per datastore call would drown the rollout's own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    topology = read_topology(home)
    if topology is None:
        print(f"no stack has run from {home}", file=sys.stderr)
        return 2
    certificates = StackCertificates(home) if topology.tls.enabled else None
    own = certificates.service(INSTANCE) if certificates else None
    settings = ServiceSettings(
        service=INSTANCE,
        instance=INSTANCE,
        environment=topology.environment,
        host=LOOPBACK,
        port=topology.rollouts_port,
        state_dir=home,
        flags_file=None,
        tls_cert_file=own.cert_file if own else None,
        tls_key_file=own.key_file if own else None,
        tls_ca_file=certificates.ca_file if certificates else None,
    )
    service = Service(settings)
    token = StackCredentials(home).token("admin")
    scheme = topology.tls.scheme
    kv = ControlKv(
        [f"{scheme}://{LOOPBACK}:{topology.datastore_port(i)}"
         for i in range(topology.services.datastore.replicas)],
        token,
        verify=service.client_ssl() or True,
    )  # fmt: skip
    effects = LocalEffects(home, sub_window_s=tuning.sub_window_s, smoke_rate=tuning.smoke_rate)
    controller, telemetry = serve_rollouts(
        service, kv, effects, tuning, token=token, environment=topology.environment
    )
    if telemetry.webhook is not None:
        service.log.info(
            "rollout events go to the webhook at %s", telemetry.webhook.host,
            extra={"event": "rollout_webhook"},
        )  # fmt: skip
    service.on_startup(controller.resume)
    service.on_shutdown(controller.stop)

    service.on_shutdown(effects.close)
    service.on_shutdown(telemetry.close)  # the last notifications get a moment to go out
    try:
        service.run()
    except OSError as exc:
        service.log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
