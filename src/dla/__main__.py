"""`python -m dla ...` (also what `torchrun -m dla ...` runs)."""

from dla.cli import main

raise SystemExit(main())
