"""Downstream subscribers of the worker's signals: ad bidding and churn alerting.

* :mod:`subscribers.records` -- parsing the signals off the wire (defensively: a bad record is
  refused with a reason, never raised) and the order in which signals of one user supersede
  each other (newer window end, duplicates recognised by ``signal_id``).
* :mod:`subscribers.bidding` -- demand signal -> bounded bid multiplier (pure).
* :mod:`subscribers.alerting` -- churn signal -> alert with hysteresis and de-duplication (pure).
* :mod:`subscribers.sinks` -- where alerts go besides Kafka: a log sink and an optional webhook.
* :mod:`subscribers.bidder`, :mod:`subscribers.alerter` -- thin Faust apps built by
  ``create_bidder(settings)`` / ``create_alerter(settings)``, each with its own app id and
  per-user table; :mod:`subscribers.bidding_app` and :mod:`subscribers.alerting_app` are their
  ``faust -A subscribers.bidding_app worker`` entry points, which only call the factory.
* :mod:`subscribers.cli` -- ``clicksignals bidder`` / ``clicksignals alerter``.

The pure modules import neither Faust nor Kafka clients and read no settings themselves; the
apps build their configuration from :class:`settings.Settings`.
"""
