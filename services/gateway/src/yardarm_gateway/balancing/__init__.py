"""The load-balancing policies behind `yardarm_gateway.balancer`, one module each.

Import them from `yardarm_gateway.balancer`, the public surface; the modules here
depend only downwards (config and contract, then slow start, then the policies;
consistent hashing falls back to round robin), so none of them imports the facade.
"""
