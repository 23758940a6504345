"""yardarm gateway: routing, balancing, health, breakers, retries and track splits.

The package root exposes the routing core only, so it imports without the service
kit; the process entry points are `yardarm_gateway.app.create_gateway` and
`yardarm_gateway.settings.GatewaySettings`.
"""

from yardarm_gateway.balancer import Balancer, RoundRobin
from yardarm_gateway.routing import Route, RouteMatch, RouteTable

__all__ = ["Balancer", "RoundRobin", "Route", "RouteMatch", "RouteTable"]
