"""yardarm gateway."""
