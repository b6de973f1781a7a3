"""One decoding step's attention, the part that reads the whole KV cache, on CUDA: the kernel
greedy_decode uses (FlashAttention's variable-length forward, one query per sequence, each
sequence's used slots) against two batched matrix products over a head-major cache (the same
keys and values, laid out (B, heads, slots, head dim)), at the size of a first-stage group of
the `full` profile's model decoding the ARC-1 evaluation inputs (1,683 sequences, regions of
1,188 slots, about 1,000 used). Prints ms per call, the GB of keys and values read and the
bandwidth that implies; KV_HEADS below 12 groups the keys and values (StudentConfig.kv_heads).
python scripts/bench_decode_attention.py [B] [CAPACITY] [USED] [KV_HEADS]"""
import sys

import torch
import torch.nn.functional as F

import sage_core as sc

B, capacity, used_mean, kv_heads = [int(a) for a in sys.argv[1:5]] + [1683, 1188, 1000, 12][len(sys.argv[1:5]):]
heads, dim = 12, 64
group = heads // kv_heads
g = torch.Generator(device="cuda").manual_seed(0)
used = torch.randint(used_mean - 20, used_mean + 1, (B,), device="cuda", dtype=torch.int32, generator=g)
q = torch.randn(B, heads, dim, device="cuda", dtype=torch.bfloat16, generator=g)
token_major = torch.randn(B, capacity, kv_heads, dim, device="cuda", dtype=torch.bfloat16, generator=g)
head_major = token_major.transpose(1, 2).contiguous()          # (B, kv_heads, capacity, dim)
longest = int(used.max())


def flash():
    cu = torch.arange(B + 1, device="cuda", dtype=torch.int32)
    flat = token_major.view(B * capacity, kv_heads, dim)
    return sc._flash_forward(q, flat, flat, cu, cu * capacity, capacity, used)


def batched_products():
    keys = head_major[:, :, :longest]                            # (B, kv_heads, n, dim): a view, no copy
    grouped = q.view(B, kv_heads, group, dim)                    # a key/value head's queries together
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() / dim ** 0.5
    scores.masked_fill_(torch.arange(longest, device="cuda") >= used[:, None, None, None], float("-inf"))
    return torch.matmul(F.softmax(scores, -1).to(keys.dtype), keys).view(B, heads, dim)


def timed(fn, repeats=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


gigabytes = 2 * float(used.sum()) * kv_heads * dim * 2 / 1e9          # keys and values actually used
torch.testing.assert_close(flash().float(), batched_products().float(), atol=2e-2, rtol=2e-2)
for name, fn in (("flash varlen", flash), ("batched products", batched_products)):
    ms = timed(fn)
    print(f"{name:>17}: {ms:.2f} ms per layer-step, {gigabytes:.1f} GB of keys and values, {gigabytes / ms:.2f} TB/s")
