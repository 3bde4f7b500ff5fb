"""Entry point for ``spark-submit``, which wants a ``.py`` file: runs the ``tier-ml`` CLI.

Example (YARN; ``--engine spark`` picks up the session spark-submit configured)::

    spark-submit --master yarn "$(python -c 'import tier_ml.engines.submit as m; print(m.__file__)')" \\
        classify --engine spark -e s3://lake/events/ -o s3://lake/tiers/ --as-of 2025-12-31
"""

from __future__ import annotations

if __name__ == "__main__":
    from tier_ml.cli import app

    app(prog_name="tier-ml")
