"""yardarm orders."""
