"""Benchmarks of yardarm's components against established peers, run on one machine.

`python -m bench NAME` runs one; each writes `bench/results/NAME.json` (see README.md).
A benchmark is a module with `run(options, console) -> rows`, registered in `__main__`.
What makes two measurements comparable is shared, so every benchmark uses it: `wrk`
(load), `cpu` (pinning, CPU use), `processes` and `loopback` (servers, 127.0.0.1 only),
`rows` (the result format), `profiling` (py-spy), `options` (run options, BenchError).
"""
