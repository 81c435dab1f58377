"""The terminal clients of a run's events: ``watch`` (follow ``/ws``) and ``progress`` (per-fold bars)."""
