"""Where one answer written at batch 1 spends its time: the test input of median prompt length
(the one the cost table times), written whole by greedy_decode, then its parts alone: the
prompt's prefill, and one writing step run eagerly and replayed as a CUDA graph (CUDA only).
The replayed step is the floor of a token's cost for a student that writes token by token.
python scripts/bench_decode_batch1.py CHECKPOINT [CHECKPOINT ...]   (run on CUDA where there is one)"""
import sys

import torch

import sage_core as sc


def timed(fn, repeats: int, device: str) -> float:
    """Milliseconds of fn(), the best of `repeats` calls after one to warm up (measure_speed)."""
    return sc.measure_speed(lambda _: fn(), [1], device, repeats)[0]["ms_per_example"]


@torch.no_grad()
def breakdown(path: str, device: str) -> None:
    ck = sc.load_checkpoint(path, device)
    cfg = sc.checkpoint_config(ck)
    prompt = sc.median_prompt(sc.test_prompts(sc.config_split(cfg["data"], cfg["run"].seed)))
    model = sc.student_from_checkpoint(ck, device)
    cuda = device.startswith("cuda")
    written = len(sc.greedy_decode(model, [prompt])[0].tokens)
    whole = timed(lambda: sc.greedy_decode(model, [prompt]), 10, device)
    with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        prefill = timed(lambda: sc._prefill(model, [prompt], len(prompt.tokens) + sc.MAX_NEW_TOKENS), 10, device)
        group = sc._GroupWriting(model, [prompt], sc.MAX_NEW_TOKENS, None)
        eager = timed(group.step, 50, device)          # the cache fills as it goes: 51 of its slots used
        graph = group.capture() if cuda else None
        replayed = timed(graph.replay, 50, device) if graph is not None else None
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
