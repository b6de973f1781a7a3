"""Where a training step of the `full` profile's sequence student spends its time, on CUDA:
ms per step and tokens per second over 40 steps of the second epoch (the first warms up and
compiles), the graphs compiled by then, then
torch.profiler's tables over 10 more (by host time and by GPU time). Config fields may be
changed as on the command line: python scripts/profile_sequence_step.py [FIELD=VALUE ...],
e.g. batch_size=64; --no-tables prints the speed alone."""
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

import sage_core as sc

args = [a for a in sys.argv[1:] if a != "--no-tables"]
cfg = sc.build_config("full", device="cuda", seconds_budget=0, **sc.parse_overrides(args))
split = sc.config_split(cfg["data"])
with tempfile.TemporaryDirectory() as folder:
    run = sc.setup_training(cfg, split, folder, progress=False)
    for rows in run.batches(0):
        sc.train_step(run, rows)
    torch.cuda.synchronize()
    second = run.batches(1)
    timed, profiled = second[:40], second[40:50]
    started = time.perf_counter()
    for rows in timed:
        sc.train_step(run, rows)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = int(run.data.train.lengths[torch.cat(timed)].sum())
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(f"{' '.join(args) or 'full profile'}: {seconds / len(timed) * 1e3:.1f} ms/step, "
          f"{tokens / seconds / 1e3:.0f}k tokens/s, {graphs} graphs compiled")
    if "--no-tables" not in sys.argv:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for rows in profiled:
                sc.train_step(run, rows)
            torch.cuda.synchronize()
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=45))
        print(table.table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=45))
