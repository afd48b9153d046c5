#!/usr/bin/env python3
"""Baseline CPU throughput of Hugging Face transformers for a bloom-560m-shaped model.

    .venv/bin/python scripts/bench_transformers.py --dtype all

Builds BloomForCausalLM with bigscience/bloom-560m's exact shape (vocab 250880, hidden 1024,
16 heads, 24 layers) and random weights in-process (nothing is downloaded), then for each
precision measures, at batch 1:

  prefill_tok_s: prompt_tokens / median time of one forward over the whole prompt with
                 use_cache=True (logits for the last position only, as generate() does);
                 one untimed warm-up forward first.
  decode_tok_s:  new_tokens / time of a greedy decode loop over the KV cache (one token per
                 forward, argmax of the last logits, no EOS stop), prefill excluded; median
                 over --runs.
  peak_rss_mb:   peak resident set size while benchmarking (VmHWM, reset after the model is
                 built, so the construction transient is excluded; peak_rss_incl_build_mb has it).

Prints one JSON line per precision:
  {"engine":"transformers","precision":"f32","prefill_tok_s":..,"decode_tok_s":..,"peak_rss_mb":..,...}
With --dtype all each precision runs in its own child process, so the RSS figures (torch and
Python included) are per precision.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PRECISIONS = {"f32": "float32", "bf16": "bfloat16"}


def peak_rss_mb() -> float:
    """Whole-process peak RSS (MiB), including model construction."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _status_kib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's VmHWM (Linux >= 4.0) so later peaks exclude model construction."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def bench_one(args) -> dict:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, PRECISIONS[args.dtype])
    config = BloomConfig(
        vocab_size=250880,
        hidden_size=1024,
        n_head=16,
        n_layer=24,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        apply_residual_connection_post_layernorm=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        use_cache=True,
    )
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target precision (no f32 copy)
    try:
        model = BloomForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(dtype).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    # Keyword names changed across transformers versions (past_key_values -> cache).
    fwd_params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in fwd_params else "past_key_values"
    keep_kw = {"logits_to_keep": 1} if "logits_to_keep" in fwd_params else {}

    import gc

    gc.collect()
    build_peak_mb = peak_rss_mb()  # read before the reset: clear_refs resets ru_maxrss too
    hwm_reset = reset_peak_rss()
    rss_after_build = _status_kib("VmRSS")

    def get_cache(out):
        return getattr(out, "cache", None) if cache_kw == "cache" else out.past_key_values

    g = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(4, config.vocab_size, (1, args.prompt_tokens), generator=g)

    @torch.inference_mode()
    def prefill():
        t = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, **keep_kw)
        return time.perf_counter() - t, out

    @torch.inference_mode()
    def decode(out):
        cache = get_cache(out)
        tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(args.new_tokens):
            o = model(input_ids=tok, use_cache=True, **{cache_kw: cache})
            cache = get_cache(o)
            tok = o.logits[:, -1, :].argmax(-1, keepdim=True)
        return time.perf_counter() - t

    prefill()  # warm-up
    prefill_times, decode_times = [], []
    for _ in range(args.runs):
        dt, out = prefill()
        prefill_times.append(dt)
        decode_times.append(decode(out))
        del out

    return {
        "engine": "transformers",
        "precision": args.dtype,
        "prefill_tok_s": round(args.prompt_tokens / statistics.median(prefill_times), 2),
        "decode_tok_s": round(args.new_tokens / statistics.median(decode_times), 2),
        # peak RSS while benchmarking (weights resident + activations + KV cache); falls back to
        # the whole-process peak where VmHWM cannot be reset.
        "peak_rss_mb": round((_status_kib("VmHWM") if hwm_reset else peak_rss_mb() * 1024) / 1024, 1),
        "rss_after_build_mb": round(rss_after_build / 1024, 1) if rss_after_build else None,
        "peak_rss_incl_build_mb": round(max(build_peak_mb, peak_rss_mb()), 1),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "threads": args.threads,
        "batch": 1,
        "params": n_params,
        "build_s": round(build_s, 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=["f32", "bf16", "all"], default="all")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.dtype == "all":
        rc = 0
        for d in PRECISIONS:
            cmd = [sys.executable, os.path.abspath(__file__), "--dtype", d,
                   "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
                   "--runs", str(args.runs), "--threads", str(args.threads), "--seed", str(args.seed)]
            rc |= subprocess.call(cmd)
        sys.exit(rc)
    print(json.dumps(bench_one(args)), flush=True)


if __name__ == "__main__":
    main()
