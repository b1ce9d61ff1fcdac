"""`python -m dla ...` (also what `torchrun -m dla ...` runs)."""

try:
    from dla.cli import run
except KeyboardInterrupt:  # Ctrl-C in the first instant, while the command line itself imports
    import sys

    sys.stderr.write("\ndla: interrupted\n")
    raise SystemExit(130) from None

run()
