"""ms per training step of the `full` profile's sequence student under variants (CUDA)."""
import tempfile
import time

import torch

import sage_core as sc

original_pack = sc.pack_rows
split = None
for name, pad, extra in [("as is", 1, {}), ("pad 1024", 1024, {}), ("batch 64", 1, {"batch_size": 64}),
                         ("batch 64 pad 1024", 1024, {"batch_size": 64})]:
    sc.pack_rows = lambda pools, rows, device="cpu", pad_to=1, _p=pad: original_pack(pools, rows, device, _p)
    cfg = sc.build_config("full", device="cuda", seconds_budget=0, **extra)
    split = split or sc.config_split(cfg["data"])
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        run = sc.setup_training(cfg, split, folder, progress=False)
        batches = run.batches(0)
        for rows in batches[:25]:
            sc.train_step(run, rows)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        n = 50
        tokens = 0
        for rows in batches[25:25 + n]:
            tokens += int(run.data.train.lengths[rows].sum())
            sc.train_step(run, rows)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t1
        print(f"{name}: set-up+warm-up {t1 - t0:.1f} s, {dt / n * 1e3:.1f} ms/step, {tokens / dt / 1e3:.0f}k tokens/s", flush=True)
    del run
    torch.cuda.empty_cache()
