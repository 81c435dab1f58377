"""The FastAPI server: REST to start, watch, cancel and fetch runs, and the ``/ws`` event stream.

Modules: ``app`` (the app factory), ``routes/`` (one module per resource: runs, hpo, data,
meta), ``ws/`` (subscription, connection, endpoint), ``security`` (token and Origin checks),
``server_owned`` (the config fields a request may not set), ``bodies`` (JSON bodies and error
responses), ``server`` (the ``serve`` command on uvicorn). Events come from
``api.ws.fanout.EventPump``, the hub's one follower. Nothing here imports torch.
"""
