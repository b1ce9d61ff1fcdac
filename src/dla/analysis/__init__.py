"""Analyses of trained runs: gradient flow (Lab 1.3)."""
