"""Benchmarks of yardarm's components against established peers, run on one machine.

`python -m bench NAME` runs one; each writes `bench/results/NAME.json` (see README.md).
"""
