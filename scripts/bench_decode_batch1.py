"""Where one answer written at batch 1 spends its time: the test input of median prompt length
(the one the cost table times), written whole by greedy_decode, then its parts alone: the
prompt's prefill, and one writing step run eagerly and replayed as a CUDA graph (CUDA only).
The replayed step is the floor of a token's cost for a student that writes token by token.
python scripts/bench_decode_batch1.py CHECKPOINT [CHECKPOINT ...]   (run on CUDA where there is one)"""
import statistics
import sys
import time

import torch

import sage_core as sc


def timed(fn, repeats: int, cuda: bool) -> float:
    """Median milliseconds of fn() over `repeats` calls, after one call to warm up."""
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


@torch.no_grad()
def breakdown(path: str, device: str) -> None:
    ck = sc.load_checkpoint(path, device)
    cfg = sc.checkpoint_config(ck)
    split = sc.config_split(cfg["data"], cfg["run"].seed)
    task = sc.task_rows(split.tasks)
    prompts = [sc.pair_sequence(split.pair(e), task=task[e.task_id], prompt=True) for e in split.test]
    prompt = sorted(prompts, key=lambda p: len(p.tokens))[len(prompts) // 2]
    model = sc.student_from_checkpoint(ck, device)
    cuda = device.startswith("cuda")
    written = len(sc.greedy_decode(model, [prompt])[0].tokens)
    whole = timed(lambda: sc.greedy_decode(model, [prompt]), 10, cuda)
    with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        prefill = timed(lambda: sc._prefill(model, [prompt], len(prompt.tokens) + sc.MAX_NEW_TOKENS), 10, cuda)
        group = sc._GroupWriting(model, [prompt], sc.MAX_NEW_TOKENS, None)
        eager = timed(group.step, 50, cuda)          # the cache fills as it goes: 51 of its slots used
        graph = group.capture() if cuda else None
        replayed = timed(graph.replay, 50, cuda) if graph is not None else None
    print(f"{path}: {sc._n_params(model):,} parameters, prompt {len(prompt.tokens)} tokens, "
          f"{written} tokens written")
    print(f"  whole answer (greedy_decode): {whole:.2f} ms, {1000 * whole / max(written, 1):.0f} µs per token written")
    print(f"  prefill of the prompt: {prefill:.2f} ms")
    print(f"  one writing step, eager: {1000 * eager:.0f} µs" +
          (f"; replayed as a CUDA graph: {1000 * replayed:.0f} µs" if replayed is not None else ""))


if __name__ == "__main__":
    target = sc.resolve_device("auto")
    for checkpoint in sys.argv[1:]:
        breakdown(checkpoint, target)
