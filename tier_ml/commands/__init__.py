"""Command groups of the ``tier-ml`` CLI that live outside ``tier_ml/cli.py`` (thin Typer shells)."""
