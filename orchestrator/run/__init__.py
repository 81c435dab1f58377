"""One run top to bottom: fold planning (``cv``, pure), ``feasibility`` (pure), the ``driver``, and
what a run leaves on disk (``reports``, ``report_html``, ``files``)."""
