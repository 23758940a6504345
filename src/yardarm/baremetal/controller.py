"""`yardarm ansible controller`: a bare-metal stack's rollout controller, run where
Ansible and the SSH keys are (the operator's machine, a bastion), until Ctrl-C/SIGTERM.

It serves the rollout API (`yardarm.rollout.api`) on loopback at the model's rollouts
port behind the stack's admin token, so `yardarm rollout` reaches it with
`YARDARM_ROLLOUTS_URL` and `YARDARM_ADMIN_TOKEN_FILE`; it keeps the rollouts in the
stack's datastore (a restarted controller resumes them) and changes the hosts through
the bare-metal effects (`yardarm.baremetal.rollout_effects`).

Why not on a host of the stack: the controller changes every host with Ansible, so it
holds the SSH key and the vault password; a stack host holding them would let whoever
takes that host take all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from yardarm.baremetal.rollout_effects import BareMetalEffects, BareMetalStack
from yardarm.rollout.settings import ControllerSettings

INSTANCE: Final = "rollouts"
LISTEN: Final = "127.0.0.1"


def serve(stack: BareMetalStack, token: str, tuning: ControllerSettings, state_dir: Path) -> int:
    """Serve until SIGTERM; the exit status."""
    from yardarm_kit import Service, ServiceSettings

    from yardarm.control_kv import ControlKv
    from yardarm.rollout.serving import resume_when_reachable, serve_rollouts

    logging.getLogger("httpx").setLevel(logging.WARNING)
    topology = stack.topology
    state_dir.mkdir(parents=True, exist_ok=True)
    service = Service(
        ServiceSettings(
            service=INSTANCE,
            instance=INSTANCE,
            environment=topology.environment,
            host=LISTEN,
            port=topology.rollouts_port,
            state_dir=state_dir,
            flags_file=None,
        )
    )
    effects = BareMetalEffects(
        stack, token, sub_window_s=tuning.sub_window_s, smoke_rate=tuning.smoke_rate
    )
    controller, telemetry = serve_rollouts(
        service, ControlKv(effects.datastore_urls(), token), effects, tuning,
        token=token, environment=topology.environment,
    )  # fmt: skip
    resume_when_reachable(service, controller)
    service.on_shutdown(controller.stop)
    service.on_shutdown(effects.close)
    service.on_shutdown(telemetry.close)
    service.log.info(
        "controlling the %s stack from %s on http://%s:%d", topology.environment,
        stack.inventory, LISTEN, topology.rollouts_port, extra={"event": "controller_start"},
    )  # fmt: skip
    try:
        service.run()
    except OSError as exc:
        service.log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        return 1
    return 0
