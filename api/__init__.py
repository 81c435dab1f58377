"""The FastAPI server: REST to start, watch, cancel and fetch runs, and the ``/ws`` event stream.

Modules: ``hub_client`` (the small subscribe interface to the EventHub), ``pump`` (one task that
polls the hub and fans events out), ``ws`` (one WebSocket client: subscription, queue, sender),
``security`` (token and Origin checks), ``app`` (the app factory and REST routes), ``server``
(the ``serve`` command on uvicorn). Nothing here imports torch.
"""
