#!/usr/bin/env python3
"""Baseline CPU training throughput of PyTorch + PEFT for a bloom-560m-shaped model.

    .venv/bin/pip install -r scripts/requirements.txt      # torch, transformers, peft
    .venv/bin/python scripts/bench_training.py --method all

Builds BloomForCausalLM with bigscience/bloom-560m's exact shape (vocab 250880, hidden 1024,
16 heads, 24 layers, layer_norm_epsilon 1e-5, dropouts 0) and random weights in-process
(nothing is downloaded), in float32 on the CPU, and times training steps at batch 1:

  lora: peft.get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        bias="none", task_type="CAUSAL_LM")) -- PEFT freezes the base weights and wraps each
        matching nn.Linear in a lora.Linear (y = W x + (alpha/r) * B A x; A kaiming-uniform,
        B zero). PEFT matches target names against the last component(s) of the module path,
        so "dense" is self_attention.dense only, not the mlp.dense_* layers. AdamW(lr 1e-4)
        over the LoRA tensors only (24 layers x 4 targets x {A, B}).
  full: every parameter trainable (the tied embedding / lm_head counted once), AdamW(lr 1e-5);
        ~560M f32 parameters + grads + two AdamW moments ~ 9 GB before activations.

Each step: one sequence of --block random token ids, loss = model(input_ids=x, labels=x).loss
(transformers' mean over the block-1 shifted positions), backward, clip_grad_norm_(1.0),
opt.step(), opt.zero_grad(). One untimed warm-up step (it also allocates AdamW's state), then
--steps timed steps.

  tokens_per_s:   block * steps / total time of the timed steps.
  step_s_median:  median time of one timed step.
  peak_rss_mb:    peak resident set size from just before the warm-up step to the end (VmHWM,
                  reset after the model is built and wrapped, so the construction transient is
                  excluded; optimizer state and activations are included). Where VmHWM cannot be
                  reset it falls back to the whole-process peak; "peak_rss_scope" says which.
  peak_rss_incl_build_mb: whole-process peak, construction included.

Prints one JSON line per method:
  {"engine":"pytorch+peft","method":"lora","block":256,"batch":1,"steps":3,"tokens_per_s":..,...}
With --method all each method runs in its own child process, so the RSS figures (torch and
Python included) are per method.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

METHODS = ["lora", "full"]
LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    torch.set_num_threads(args.threads)
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
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = BloomForCausalLM(config).float()
    assert model.lm_head.weight is model.transformer.word_embeddings.weight
    n_params = sum(p.numel() for p in model.parameters())

    peft_version = None
    if args.method == "lora":
        import peft
        from peft import LoraConfig, get_peft_model

        peft_version = peft.__version__
        lcfg = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lcfg)
        lr = 1e-4
    else:
        lr = 1e-5
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    if args.method == "lora":
        assert len(trainable) == 2 * config.n_layer * len(LORA_TARGETS), len(trainable)
    else:
        assert n_trainable == n_params
    opt = torch.optim.AdamW(trainable, lr=lr)
    build_s = time.perf_counter() - t0

    import gc

    gc.collect()
    build_peak_mb = peak_rss_mb()  # read before the reset: clear_refs resets ru_maxrss too
    hwm_reset = reset_peak_rss()
    rss_after_build = _status_kib("VmRSS")

    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randint(4, config.vocab_size, (1, args.block), generator=g)

    def step() -> tuple[float, float]:
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, loss.item()

    warm_s, first_loss = step()  # warm-up; also allocates the AdamW state
    times, last_loss = [], first_loss
    for _ in range(args.steps):
        dt, last_loss = step()
        times.append(dt)

    hwm = _status_kib("VmHWM") if hwm_reset else None
    return {
        "engine": "pytorch+peft",
        "method": args.method,
        "block": args.block,
        "batch": 1,
        "steps": args.steps,
        "tokens_per_s": round(args.block * args.steps / sum(times), 2),
        "step_s_median": round(statistics.median(times), 3),
        "warmup_step_s": round(warm_s, 3),
        "peak_rss_mb": round(hwm / 1024 if hwm is not None else peak_rss_mb(), 1),
        "peak_rss_scope": "after_build" if hwm is not None else "whole_process",
        "rss_after_build_mb": round(rss_after_build / 1024, 1) if rss_after_build else None,
        "peak_rss_incl_build_mb": round(max(build_peak_mb, peak_rss_mb()), 1),
        "threads": args.threads,
        "params": n_params,
        "trainable_params": n_trainable,
        "lr": lr,
        "loss_first": round(first_loss, 4),
        "loss_last": round(last_loss, 4),
        "build_s": round(build_s, 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=[*METHODS, "all"], default="all")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.method == "all":
        rc = 0
        for m in METHODS:
            cmd = [sys.executable, os.path.abspath(__file__), "--method", m, "--block", str(args.block),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed)]
            rc |= subprocess.call(cmd)
        sys.exit(rc)
    print(json.dumps(bench_one(args)), flush=True)


if __name__ == "__main__":
    main()
