"""Shared fixtures: the ARC-AGI-1 sets (loaded once) and one smoke run of the notebook pipeline."""
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

import sage_core as sc  # noqa: E402


@pytest.fixture(scope="session")
def arc1_training():
    return sc.load_arc("arc1/training")


@pytest.fixture(scope="session")
def arc1_evaluation():
    return sc.load_arc("arc1/evaluation")


@pytest.fixture(scope="session")
def tiny():
    """The tiny stand-in teacher on the CPU (seeded: every instance has the same weights)."""
    return sc.load_teacher("standin", "cpu", preset="tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Toy models are all overhead: on this 2-core machine one thread runs them faster than two
    contending ones. A module asks for it with pytestmark = pytest.mark.usefixtures(...)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole notebook chain on the smoke profile, through the CLI, in a temporary runs folder
    (never the real runs/). Returns the run folder."""
    runs_root = tmp_path_factory.mktemp("runs")
    code = sc.main(["pipeline", "--profile", "smoke", "--device", "cpu", "--run-id", "smoke",
                    "--runs-root", str(runs_root)])
    run_dir = runs_root / "smoke"
    record = json.loads((run_dir / "run.json").read_text())
    assert code == 0, record.get("failure")
    return run_dir


@pytest.fixture(scope="session")
def hand_count():
    """Scores counted without sage_core, from rows (task_id, attempts, target): pixel accuracy
    and exact grids of the first attempt (a wrong size counts every target cell wrong), and the
    share of tasks all of whose targets are right at the first attempt and within two."""
    def count(rows):
        right = total = exact = 0
        first: dict[str, bool] = {}
        two: dict[str, bool] = {}
        for task_id, attempts, target in rows:
            grids = [np.asarray(a) for a in attempts[:2]]
            same = [g.shape == target.shape and bool((g == target).all()) for g in grids]
            total += target.size
            right += int((grids[0] == target).sum()) if grids[0].shape == target.shape else 0
            exact += same[0]
            first[task_id] = first.get(task_id, True) and same[0]
            two[task_id] = two.get(task_id, True) and any(same)
        return {"pixel": right / total, "exact": exact / len(rows),
                "pass@1": float(np.mean(list(first.values()))), "pass@2": float(np.mean(list(two.values())))}
    return count
