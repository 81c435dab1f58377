"""Events: the hub that orders, stamps, holds and serves them, its publishers, and the one stream following it.

Modules: ``hub`` (EventHub), ``ordering`` (per-producer order, retry repeats), ``history`` (the
held events), ``journal`` (events.jsonl), ``milestones`` (derived notifications), ``demand``
(which optional types are wanted), ``publish`` (sinks and publishers), ``actor`` (the hub as a
Ray actor), ``stream`` (the one follower of the hub), ``fanout`` (the API's stream to WebSocket
clients).
"""
