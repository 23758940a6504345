"""yardarm orders: the orders API and the order saga (stock, payment, shipping).

Public surface: `create_orders(settings)` and `OrdersSettings`; `python -m yardarm_orders`
runs a replica from `YARDARM_ORDERS_*` environment variables.
"""

from yardarm_orders.app import OrdersService, create_orders
from yardarm_orders.settings import OrdersSettings

__all__ = ["OrdersService", "OrdersSettings", "create_orders"]
