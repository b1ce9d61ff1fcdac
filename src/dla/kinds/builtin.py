"""Importing this module registers the built-in run kinds (`dla.build` does, so every command has them)."""

from dla.kinds import image, language_model, text_classifier

__all__ = ["image", "language_model", "text_classifier"]
