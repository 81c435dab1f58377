"""``/ws``: what a client subscribes to, one client's connection, and the endpoint that serves them all.

Modules: ``subscription`` (the query parameters: since, run_id, types), ``connection`` (one
client's state machine, bounded queue, replay and sender), ``endpoint`` (the route: client cap,
accept, a sender and a reader per client, close frames).
"""
