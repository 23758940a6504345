"""yardarm control plane."""
