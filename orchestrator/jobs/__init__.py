"""Runs as jobs of a server: the run ``manager``, a run's ``coordinator`` actor in the cluster,
``reattach`` after a restart, and the job queue (``queue``, its pure ``policy``, ``admission``).

Nothing is re-exported here, so importing the package never imports Ray."""
