"""`python -m bench NAME`: run one benchmark, print its table, write its results."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bench import cli, consumer, datastore, gateway, orders
from bench.options import BenchError, Options
from bench.rows import RESULTS_DIR, Row, results_table, write_results

Benchmark = Callable[[Options, Console], list[Row]]

# Each benchmark module exposes `run(options, console) -> rows`; add new ones here.
BENCHMARKS: dict[str, Benchmark] = {
    "cli": cli.run,
    "consumer": consumer.run,
    "datastore": datastore.run,
    "gateway": gateway.run,
    "orders": orders.run,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark a yardarm component against its peer."
    )
    parser.add_argument("name", help=f"benchmark to run: {', '.join(sorted(BENCHMARKS))}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run of 3s after a 1s warm-up; writes no file unless --output",
    )
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    parser.add_argument("--runs", type=int, help="measured runs per target, median kept (3)")
    parser.add_argument("--profile", action="store_true", help="also profile with py-spy")
    parser.add_argument(
        "--output", type=Path, help="results file (default bench/results/NAME.json)"
    )
    return parser.parse_args(argv)


def output_path(args: argparse.Namespace) -> Path | None:
    """Where results go; a quick run keeps none unless asked, so it never replaces a real one."""
    if args.output is not None:
        return Path(args.output)
    return None if args.quick else RESULTS_DIR / f"{args.name}.json"


def options_from(args: argparse.Namespace, output: Path | None) -> Options:
    base = Options(duration_s=3, warmup_s=1, runs=1, quick=True) if args.quick else Options()
    duration = base.duration_s if args.duration is None else args.duration
    runs = base.runs if args.runs is None else args.runs
    if duration < 1 or runs < 1:
        raise BenchError("--duration and --runs must be at least 1")
    return Options(
        duration_s=duration,
        warmup_s=base.warmup_s,
        runs=runs,
        quick=base.quick,
        profile=args.profile,
        artifacts_dir=None if output is None else output.parent,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Wide enough for the results table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 160)
    benchmark = BENCHMARKS.get(args.name)
    if benchmark is None:
        known = ", ".join(sorted(BENCHMARKS))
        console.print(f"[red]unknown benchmark {args.name!r}[/red]; known benchmarks: {known}")
        return 2
    output = output_path(args)
    try:
        rows = benchmark(options_from(args, output), console)
    except BenchError as exc:
        console.print(f"[red]bench {args.name}: {escape(str(exc))}[/red]")
        return 1
    except KeyboardInterrupt:
        console.print(f"[yellow]bench {args.name}: interrupted, nothing written[/yellow]")
        return 130
    console.print(results_table(f"bench {args.name}", rows))
    if output is None:
        console.print("quick run: results not written (pass --output PATH to keep them)")
    else:
        console.print(f"results written to {write_results(output, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
