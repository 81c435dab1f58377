"""The plain loop against a baseline commit, both sessions at once on the same machine. Prints JSON.

Issue 22's goal "the plain loop itself: not slower than today's" compares this tree's plain loop
(``bench/hpo_sessions.py``'s ``plain`` mode: ``--executor local --parallel 1 --pack 1``) with the
plain loop of ``--baseline`` (a git commit, default 622d01a, where the issue measured 2.69 s; a
tree without ``--pack`` runs without it). A plain session is one busy thread, so on a machine
with two cores or more both sessions run at the same time, each on its own core: whatever the
host's speed does during the pair (this host's moves by 10-25 % between minutes) it does to
both, which one after the other it does not (six sequential pairs here differed by 0.05-0.56 s,
always the same way, and by less than 0.1 s either way when run at once). Each pair starts the
two in the opposite order to the last. The baseline is checked out into a temporary
``git worktree`` and removed after.

Per pair: each session's ``steady_trial_seconds`` (the median trial after the first, from
Optuna's storage) and their ratio, tree / baseline; the median ratio over pairs is the figure.

Usage: python bench/plain_baseline.py [--baseline 622d01a] [--pairs 4] [--trials 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.hpo_sessions import (  # noqa: E402
    MODES,
    ROOT,
    add_session_arguments,
    session_command,
    session_figures,
)
from bench.machine import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="622d01a")
    parser.add_argument("--pairs", type=int, default=4)
    add_session_arguments(parser, trials=8)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("plain_baseline runs two sessions at once: it needs two cores or more")
    with tempfile.TemporaryDirectory(prefix="bench_plain_baseline_") as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(base), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            plain = MODES["plain"]
            flags = {"tree": (ROOT, plain), "baseline": (base, plain if _has_pack_flag(base) else plain[:-2])}
            pairs = [
                run_pair(flags, args, Path(tmp) / f"pair{i}", reverse=i % 2 == 1) for i in range(args.pairs)
            ]
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True
            )
    ratios = [p["tree"]["steady_trial_seconds"] / p["baseline"]["steady_trial_seconds"] for p in pairs]
    print(
        json.dumps(
            {
                "benchmark": "plain_baseline",
                "machine": machine(("torch", "optuna")),
                "load_average": os.getloadavg(),
                "args": vars(args),
                "goal": "tree / baseline steady plain trial <= 1.0 (not slower)",
                "median_ratio_tree_over_baseline": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "pairs": pairs,
            },
            indent=2,
        )
    )


def _has_pack_flag(tree: Path) -> bool:
    """Whether the code at ``tree`` has the ``pack`` config field and so its flag (issue 22's,
    after 622d01a: every config field is a flag)."""
    return "\n    pack: " in (tree / "orchestrator" / "config.py").read_text()


def run_pair(
    flags: dict[str, tuple[Path, list[str]]], args: argparse.Namespace, work: Path, *, reverse: bool
) -> dict[str, Any]:
    """The tree's and the baseline's plain sessions at once; their figures."""
    names = ["baseline", "tree"] if reverse else ["tree", "baseline"]
    started: dict[str, tuple[subprocess.Popen[str], float, Path]] = {}
    for name in names:
        root, mode_flags = flags[name]
        folder = work / name
        command, env = session_command(root, mode_flags, args, folder)
        started[name] = (
            subprocess.Popen(
                command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            ),
            time.time(),
            folder,
        )
    figures: dict[str, Any] = {}
    for name, (proc, launched, folder) in started.items():
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{name} session failed ({proc.returncode}): {err[-2000:]}")
        figures[name] = session_figures(name, folder, launched, args.trials, parallel=1)
    print(json.dumps({n: f["steady_trial_seconds"] for n, f in figures.items()}), file=sys.stderr, flush=True)
    return figures


if __name__ == "__main__":
    main()
