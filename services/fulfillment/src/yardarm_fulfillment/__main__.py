"""`python -m yardarm_fulfillment`: one fulfillment instance, settings from the environment."""

from __future__ import annotations

from yardarm_fulfillment.app import create_fulfillment
from yardarm_fulfillment.settings import FulfillmentSettings


def main() -> None:
    create_fulfillment(FulfillmentSettings()).service.run()  # type: ignore[call-arg]


if __name__ == "__main__":
    main()
