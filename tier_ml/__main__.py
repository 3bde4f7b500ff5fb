"""``python -m tier_ml``: the same as the ``tier-ml`` command."""

from tier_ml.launch import main

main()
