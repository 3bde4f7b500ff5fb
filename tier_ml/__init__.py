"""tier-ml: deterministic customer tiers from buffered spend, and the models that predict them."""

__version__ = "0.1.0"
