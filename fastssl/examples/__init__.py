"""Runnable examples of the loader in training code (not imported by the package itself)."""
