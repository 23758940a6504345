"""`python -m yardarm_orders`: run one orders replica with settings from the environment."""

from __future__ import annotations

from yardarm_orders.app import create_orders
from yardarm_orders.settings import OrdersSettings


def main() -> None:
    create_orders(OrdersSettings()).service.run()  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
