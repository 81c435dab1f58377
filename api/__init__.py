"""The FastAPI server: REST to start, watch, cancel and fetch runs, and the ``/ws`` event stream.

Events come from ``orchestrator.events.fanout.EventPump`` (the hub's one follower, fanning each
event out to the clients). Modules: ``ws`` (one WebSocket client: subscription, queue, sender),
``security`` (token and Origin checks), ``app`` (the app factory and REST routes), ``server``
(the ``serve`` command on uvicorn). Nothing here imports torch.
"""
