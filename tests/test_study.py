"""scripts/study.sh: each row trains what its name says (teacher terms included), on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def stage(name, root):
    env = {**os.environ, "PYTHON": sys.executable, "PROFILE": "smoke", "DEVICE": "cpu", "PRESET": "tiny",
           "BUDGET": "2", "TEACHER_BUDGET": "2"}
    subprocess.run(["bash", str(ROOT / "scripts" / "study.sh"), name, str(root)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return root / name


def config(run):
    return json.loads((run / "train_config.json").read_text())["config"]


def test_study_rows_carry_their_teacher_terms(tmp_path):
    for name in ("teacher", "sage-store", "standin-store"):
        stage(name, tmp_path)
    rows = {name: config(stage(name, tmp_path)) for name in ("a1", "b", "c2")}
    assert rows["a1"]["loss"]["w_feat"] == 0 and rows["a1"]["run"]["seed"] == 1
    assert rows["b"]["teacher"]["teacher"] == "standin" and rows["b"]["loss"]["w_feat"] == 0.5
    c = rows["c2"]
    assert (c["teacher"]["teacher"], c["loss"]["w_feat"], c["loss"]["w_kd"], c["run"]["seed"]) == ("sage", 0.5, 1.0, 2)
    assert {r["student"]["width"] for r in rows.values()} == {192}      # one student for every row
    for name in ("a1", "b", "c2"):
        assert "pass@2" in json.loads((tmp_path / name / "train_summary.json").read_text())["test"]
    with pytest.raises(subprocess.CalledProcessError):
        stage("e", tmp_path)
