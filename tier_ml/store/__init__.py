"""The tier store: the order ledger, tier state, overrides, audit log, outbox and policy versions.

``service`` holds the use cases (ingest a batch, sweep due customers, overrides,
policy versions, exports); ``repository`` and ``unit_of_work`` hide the
database (SQLite by default, PostgreSQL in production, see ``db``);
``intake`` and ``evaluation`` are the pure parts (admitting events by the
rules of ``tier_ml.events``, and recording what ``tier_ml.rules`` decides).
"""
