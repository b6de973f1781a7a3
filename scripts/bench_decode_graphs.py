"""Greedy decoding with each step replayed as a CUDA graph against the same steps run eagerly:
a trained run's checkpoint writes N of the evaluation test inputs' versions (a random draw,
seed 0) both ways; prints the seconds of each and how many answers agree token for token.
python scripts/bench_decode_graphs.py RUN_DIR [N] [CHECKPOINT]   (default 4000, best.pt)"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sage_core as sc

run_dir = Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
ck = sc.load_checkpoint(run_dir / "checkpoints" / (sys.argv[3] if len(sys.argv) > 3 else "best.pt"))
cfg = sc.checkpoint_config(ck)
split = sc.config_split(cfg["data"], cfg["run"].seed)
pools = sc.version_pools(split, "test", cfg["data"].augmentations, cfg["run"].seed, prompts=True)
chosen = np.random.default_rng(0).choice(len(pools.pair), min(n, len(pools.pair)), replace=False)
prompts = [pools.sequence(int(r)) for r in chosen]
model = sc.student_from_checkpoint(ck, "cuda")
sc.greedy_decode(model, prompts[:64])                 # compiled blocks and kernels warmed up
written = {}
for graphs in (False, True):
    sc._DECODE_GRAPHS = graphs
    torch.cuda.synchronize()
    started = time.perf_counter()
    written[graphs] = sc.greedy_decode(model, prompts)
    seconds = time.perf_counter() - started
    print(f"{'graphs' if graphs else 'eager'}: {len(prompts)} versions written in {seconds:.1f} s")
same = sum(np.array_equal(a.tokens, b.tokens) for a, b in zip(written[False], written[True]))
print(f"{same} of {len(prompts)} answers the same token for token; graphs still on: {sc._DECODE_GRAPHS}")
