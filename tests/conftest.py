"""Shared fixtures: the ARC-AGI-1 sets (loaded once) and one smoke run of the notebook pipeline."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
