"""`python -m yardarm.chaos --config FILE`: one stack's chaos controller, until SIGTERM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from yardarm.chaos.config import ChaosConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m yardarm.chaos",
        description="Run a stack's chaos controller: link proxies and the /faults API.",
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="chaos.json rendered by the topology"
    )
    args = parser.parse_args(argv)
    try:
        config = ChaosConfig.model_validate_json(args.config.read_text())
    except OSError as exc:
        print(f"cannot read {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"{args.config} is not a chaos config: {exc}", file=sys.stderr)
        return 2
    # Imported here: the kit's telemetry and aiohttp are only needed once the config is good.
    from yardarm.chaos.controller import build_service

    service, _controller = build_service(config)
    try:
        service.run()
    except OSError as exc:
        service.log.error("cannot start: %s", exc, extra={"event": "start_failed"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
