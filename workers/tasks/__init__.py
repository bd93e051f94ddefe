"""Tasks, one module per queue."""
