"""The built-in run kinds, one module each (see `dla.kind` for what a kind is and how one registers)."""
