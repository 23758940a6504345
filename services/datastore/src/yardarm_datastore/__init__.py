"""yardarm datastore."""
