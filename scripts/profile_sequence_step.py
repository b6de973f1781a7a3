"""Where a training step of the `full` profile's sequence student spends its time, on CUDA:
ms per step over 40 steps (after 40 of warm-up and compilation), then torch.profiler's tables
over 10 more (by host time and by GPU time). Usage: python scripts/profile_sequence_step.py"""
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sage_core as sc

cfg = sc.build_config("full", device="cuda", seconds_budget=0)
split = sc.config_split(cfg["data"])
with tempfile.TemporaryDirectory() as folder:
    run = sc.setup_training(cfg, split, folder, progress=False)
    batches = run.batches(0)
    for rows in batches[:40]:
        sc.train_step(run, rows)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for rows in batches[40:80]:
        sc.train_step(run, rows)
    torch.cuda.synchronize()
    print("ms/step", (time.perf_counter() - started) / 40 * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for rows in batches[80:90]:
            sc.train_step(run, rows)
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=45))
    print(table.table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=45))
