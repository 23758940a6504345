"""`python -m yardarm` runs the CLI."""

from yardarm.cli import main

main()
