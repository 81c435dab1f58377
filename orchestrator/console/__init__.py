"""The command line: ``main`` (``python -m orchestrator`` and its subcommands), ``flags`` (generated
from the config model), the headless ``train`` follower, ``watch``, ``progress``, ``hpo``, and the
commands against a server (``remote``, ``jobs``, ``hpo_server``)."""
