"""The REST routes, one module per resource: ``runs``, ``hpo`` (studies), ``data`` (candles), ``meta``.

Each module builds an ``APIRouter`` around the objects it needs; ``api.app.create_app`` includes
them. Every 4xx answer is a JSON object with an ``error`` string (and ``fields`` when request
fields are at fault).
"""
