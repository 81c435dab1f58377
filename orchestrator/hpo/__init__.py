"""Hyperparameter search with Optuna over whole CV runs, trials in parallel on Ray (docs/hpo.md).

The public names, re-exported from the modules that define them: ``space`` (what is tuned),
``spec`` (one session's settings), ``study`` (the trial loop), ``pruning``, ``results``,
``service`` (studies for the API); the ``orchestrator hpo`` command is ``cli``.
"""

from orchestrator.hpo.pruning import EpochTracker
from orchestrator.hpo.results import StudyResult
from orchestrator.hpo.service import (
    HpoService,
    StudyConflictError,
    StudyHandle,
    UnknownStudyError,
    study_status,
)
from orchestrator.hpo.space import (
    DEFAULT_SEARCH_SPACE,
    SearchSpace,
    load_search_space,
    parse_search_space,
)
from orchestrator.hpo.spec import (
    STUDY_NAME_PATTERN,
    HpoSpec,
    default_direction,
    pack_resources,
    spec_from_mapping,
)
from orchestrator.hpo.state import StudyState
from orchestrator.hpo.study import run_study

__all__ = [
    "DEFAULT_SEARCH_SPACE",
    "EpochTracker",
    "HpoService",
    "HpoSpec",
    "SearchSpace",
    "StudyConflictError",
    "StudyHandle",
    "StudyResult",
    "StudyState",
    "UnknownStudyError",
    "default_direction",
    "load_search_space",
    "pack_resources",
    "parse_search_space",
    "run_study",
    "spec_from_mapping",
    "STUDY_NAME_PATTERN",
    "study_status",
]
