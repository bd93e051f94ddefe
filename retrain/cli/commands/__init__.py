"""Subcommands of the ``retrain`` CLI, one module per area; each exposes ``register(subparsers)``."""
