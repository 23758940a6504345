"""yardarm fulfillment."""
