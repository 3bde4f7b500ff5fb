"""Notifications: delivering the outbox, downgrade warnings, retention campaigns, loyalty sync.

The store writes an outbox row in the same transaction as every tier change
(``tier_ml.store``); this package is what happens *after* commit:

- :mod:`tier_ml.notify.config` reads the channels YAML (webhooks, SMTP email,
  the loyalty-points sync; secrets only from the environment);
- :mod:`tier_ml.notify.dispatcher` delivers pending messages at least once, in
  order per customer, with exponential backoff and a dead-letter state;
- :mod:`tier_ml.notify.downgrade_warnings` queues "spend X by D to keep Gold"
  messages a configurable number of days before a grace period ends;
- :mod:`tier_ml.notify.campaigns` selects at-risk customers for a retention
  offer (threshold, cooldown, seeded control group) and records every run;
- :mod:`tier_ml.notify.service` is the use-case layer the CLI and the API call.

Time is always passed in (``now_us``, epoch microseconds).
"""
