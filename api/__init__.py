"""The FastAPI server: REST to start, watch, cancel and fetch runs, and the ``/ws`` event stream.

Modules: ``app`` (the app factory), ``routes/`` (one module per resource: runs, hpo, data,
meta), ``ws/`` (subscription, connection, endpoint), ``security`` (token and Origin checks),
``server_owned`` (the config fields a request may not set), ``bodies`` (JSON bodies and error
responses), ``server`` (the ``serve`` command on uvicorn), ``hub_client`` and ``pump`` (the
hub's follower in the API process). Nothing here imports torch.
"""
