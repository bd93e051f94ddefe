"""`retrain` subcommands: registry."""

from __future__ import annotations


def register(sub) -> None:
    """Add this area's subcommands to the parser."""
