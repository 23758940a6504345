"""`python -m yardarm_gateway`: run the gateway with settings from the environment."""

from __future__ import annotations

from yardarm_gateway.app import create_gateway
from yardarm_gateway.settings import GatewaySettings


def main() -> None:
    create_gateway(GatewaySettings()).run()  # type: ignore[call-arg]  # fields come from env


if __name__ == "__main__":
    main()
