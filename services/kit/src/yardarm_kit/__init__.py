"""yardarm kit."""
