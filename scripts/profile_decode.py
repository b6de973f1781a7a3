"""Where decoding a trained sequence student's answers spends its time (on CUDA where there is
one): the first decoding group of `score` (the longest prompts, 256 written tokens) and the
group after it, each under torch.profiler, then tables by host time and by GPU time, the
groups' steps and seconds, and the graphs compiled by then. Scoring stops after those groups.
python scripts/profile_decode.py RUN_DIR [CHECKPOINT]   (CHECKPOINT: default best.pt)"""
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import sage_core as sc

run_dir = Path(sys.argv[1])
checkpoint = run_dir / "checkpoints" / (sys.argv[2] if len(sys.argv) > 2 else "best.pt")
decode_group, profiled = sc._decode_group, []


class Enough(Exception):
    """Raised once the groups to profile are done: scoring has nothing more to show."""


def profiled_group(model, prompts, *args, **kwargs):
    if len(profiled) == 2:
        raise Enough
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        written = decode_group(model, prompts, *args, **kwargs)
        seconds = time.perf_counter() - started
    profiled.append((len(prompts), max(len(d.tokens) for d in written), seconds, prof))
    return written


sc._decode_group = profiled_group
try:
    sc.score_run(run_dir, checkpoint, "auto")
except Enough:
    pass
for sequences, steps, seconds, prof in profiled:
    print(f"group of {sequences} sequences: {steps} steps in {seconds:.2f} s "
          f"({seconds / steps * 1e3:.1f} ms per step, profiler on)")
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=60))
    print(table.table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))
print("graphs compiled:", torch._dynamo.utils.counters["stats"]["unique_graphs"])
