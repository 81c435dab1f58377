"""The driver's view of a run's data: the per-process data and feature ``cache``, and the ``watch``ed
file whose appended rows become ``chart_update`` candles."""
