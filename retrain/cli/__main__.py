"""`python -m retrain.cli`: the same command as `retrain`."""

from retrain.cli import main

raise SystemExit(main())
