#!/usr/bin/env python3
"""Generate the training reference fixtures under tests/fixtures/training/ (run from anywhere).

    python3 -m venv .venv
    .venv/bin/pip install -r scripts/requirements.txt      # torch, transformers, peft, ...
    .venv/bin/python scripts/make_training_fixtures.py

Reference numbers for the Rust fine-tuning code (LoRA and full fine-tune), produced with
PyTorch + transformers + PEFT on CPU in float32, deterministically (fixed seeds, one thread,
deterministic algorithms, dropouts 0). Base model: tests/fixtures/models/tiny-bloom-4h
(made by scripts/make_fixtures.py; hidden 64, 4 heads, 2 layers, vocab 1024, tied embeddings).

Data: every non-empty (stripped) line of tests/fixtures/corpus_es.txt is one document, encoded
with the raw `tokenizers` file (`encode(line, add_special_tokens=False).ids`) and followed by
</s>=2; the documents are concatenated in file order and cut into consecutive blocks of 32
tokens (remainder dropped); the first 40 blocks are used and stored in reference.json
(`blocks`, plus `documents_used` = how many leading lines fill them).

Loss = transformers' `model(input_ids=x, labels=x).loss`: labels shifted inside the model and
a plain mean of the cross entropy over all B*(T-1) shifted positions of the (micro-)batch
(no num_items_in_batch is passed, so fixed_cross_entropy uses reduction="mean").

1. LoRA (PEFT): torch.manual_seed(0); get_peft_model(LoraConfig(r=4, lora_alpha=8,
   lora_dropout=0, target_modules=[query_key_value, dense, dense_h_to_4h, dense_4h_to_h],
   bias="none", task_type=CAUSAL_LM)), PEFT's default init (A kaiming-uniform, B zero), so the
   LoRA delta is (alpha/r) * B @ A = 2 * B @ A. PEFT matches target names by the last name
   component(s), so "dense" wraps only self_attention.dense. The initial adapter is saved to
   lora-init/ (save_pretrained: adapter_config.json + adapter_model.safetensors; PEFT stores
   the tensors as base_model.model.transformer.h.N.<module>.lora_{A,B}.weight, the adapter
   name "default" stripped; A is [r, in], B is [out, r]).
   AdamW(lr 1e-2, betas (0.9, 0.999), eps 1e-8, weight decay 0.01) over the LoRA tensors,
   transformers.get_cosine_schedule_with_warmup(warmup 2, total 6) (so step 0 runs with
   lr 0: AdamW's moments and step count advance but the weights do not move).
   6 optimizer steps; step k uses blocks [4k, 4k+4) as two micro-batches of 2 blocks
   (gradient accumulation: (loss / 2).backward() each), then clip_grad_norm_(max 1.0)
   (recorded: the pre-clip total norm), opt.step(), scheduler.step(), zero_grad().
   Recorded per step: mean of the two micro-batch losses, grad norm, lr used.
   The trained adapter goes to lora-after/. Then, in eval mode: mean loss over blocks
   24..32 (one batch of 8) with the adapter (val_loss_after) and without it
   (model.disable_adapter(); val_loss_before); merge_and_unload() and the per-token log-probs
   of block 0 under the merged model (merged_logprobs[i] = log p(b[i+1] | b[..=i]), 31 values)
   and under the base model (base_logprobs).
2. Full fine-tune: the base model reloaded from disk, every parameter trainable (the tied
   embedding / lm_head is one parameter), AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
   decay 0.01), constant lr, clip_grad_norm_(max 1.0); 2 steps, step k on blocks [2k, 2k+2) as
   one batch of 2. All parameters afterwards -> full-after.safetensors, with the unprefixed
   names of model.transformer.named_parameters() (word_embeddings.weight, h.0.…, ln_f.bias).

Outputs (all committed; CI never runs Python):
  tests/fixtures/training/reference.json
  tests/fixtures/training/lora-init/{adapter_config.json,adapter_model.safetensors}
  tests/fixtures/training/lora-after/{adapter_config.json,adapter_model.safetensors}
  tests/fixtures/training/full-after.safetensors

The adapter_config.json files are rewritten after save_pretrained: base_model_name_or_path is
set to the relative "tests/fixtures/models/tiny-bloom-4h" and target_modules (a Python set in
PEFT, so its order depends on PYTHONHASHSEED) is sorted, to keep the files reproducible.
PEFT's generated README.md model card is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

# Determinism knobs that must be set before the libraries spin up thread pools.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("RAYON_RS_NUM_CPUS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import BloomForCausalLM, get_cosine_schedule_with_warmup  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures"
MODEL_REL = "tests/fixtures/models/tiny-bloom-4h"
MODEL_DIR = REPO / MODEL_REL
CORPUS = FIX / "corpus_es.txt"
OUT = FIX / "training"

BLOCK = 32
N_BLOCKS = 40
EOS = 2

TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
LORA = {
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "target_modules": TARGETS,
    "lr": 1e-2,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0.01,
    "warmup_steps": 2,
    "total_steps": 6,
    "schedule": "cosine",
    "grad_accumulation": 2,
    "micro_batch": 2,
    "max_grad_norm": 1.0,
    "seed": 0,
}
VAL_BLOCKS = [24, 32]
FULL = {
    "lr": 1e-3,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0.01,
    "warmup_steps": 0,
    "total_steps": 2,
    "schedule": "constant",
    "grad_accumulation": 1,
    "micro_batch": 2,
    "max_grad_norm": 1.0,
}


def log(*a):
    print(*a, flush=True)


def make_blocks() -> tuple[list[list[int]], int]:
    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    need = BLOCK * N_BLOCKS
    stream: list[int] = []
    used = 0
    for line in CORPUS.read_text(encoding="utf-8").split("\n"):
        if len(stream) >= need:
            break
        used += 1
        line = line.strip()
        if not line:
            continue
        stream.extend(tok.encode(line, add_special_tokens=False).ids)
        stream.append(EOS)
    assert len(stream) >= need, (len(stream), need)
    blocks = [stream[i * BLOCK : (i + 1) * BLOCK] for i in range(N_BLOCKS)]
    # `used` leading lines (of the file split on "\n") are exactly enough: one fewer is not.
    return blocks, used


def load_base() -> BloomForCausalLM:
    model = BloomForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32)
    cfg = model.config
    assert cfg.hidden_dropout == 0.0 and cfg.attention_dropout == 0.0, cfg
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight is model.transformer.word_embeddings.weight, "embeddings not tied"
    for p in model.parameters():
        assert p.dtype == torch.float32
    model.train()
    return model


def batch(blocks, lo, hi) -> torch.Tensor:
    return torch.tensor(blocks[lo:hi], dtype=torch.long)


def token_logprobs(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(input_ids=x, use_cache=False).logits[0].float()
        lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:, None])[:, 0]
    return [float(v) for v in lp]


def fix_adapter_config(d: Path) -> None:
    p = d / "adapter_config.json"
    cfg = json.loads(p.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = MODEL_REL
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    readme = d / "README.md"
    if readme.exists():
        readme.unlink()
    files = sorted(f.name for f in d.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"], files


def save_adapter(model, d: Path) -> dict[str, torch.Tensor]:
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(str(d))
    fix_adapter_config(d)
    return safetensors.torch.load_file(str(d / "adapter_model.safetensors"))


def check_adapter_tensors(sd: dict[str, torch.Tensor], n_layer: int) -> None:
    pairs = {k[: -len(".lora_A.weight")] for k in sd if k.endswith(".lora_A.weight")}
    assert {k for k in sd if k.endswith(".lora_B.weight")} == {p + ".lora_B.weight" for p in pairs}, sorted(sd)
    assert len(sd) == 2 * len(pairs), sorted(sd)
    assert len(pairs) == n_layer * len(TARGETS), sorted(pairs)
    for v in sd.values():
        assert v.dtype == torch.float32


def run_lora(blocks) -> dict:
    model = load_base()
    n_layer = model.config.n_layer
    cfg = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(LORA["seed"])
    model = get_peft_model(model, cfg)
    model.train()

    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    log("LoRA-wrapped modules:")
    for n in wrapped:
        log(f"  {n}")
    suffixes = sorted(n.split("transformer.h.", 1)[1].split(".", 1)[1] for n in wrapped)
    expect = sorted(
        s for s in ["self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
        for _ in range(n_layer)
    )
    assert suffixes == expect, suffixes  # "dense" matched only self_attention.dense

    trainable = [p for p in model.parameters() if p.requires_grad]
    tnames = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * n_layer * len(TARGETS), tnames
    assert all(".lora_A." in n or ".lora_B." in n for n in tnames), tnames
    log(f"trainable: {len(trainable)} tensors, {sum(p.numel() for p in trainable)} values")

    init_sd = save_adapter(model, OUT / "lora-init")
    check_adapter_tensors(init_sd, n_layer)
    assert all(float(v.abs().max()) == 0.0 for k, v in init_sd.items() if ".lora_B." in k), "B must start at zero"
    assert all(float(v.abs().max()) > 0.0 for k, v in init_sd.items() if ".lora_A." in k)

    opt = torch.optim.AdamW(
        trainable, lr=LORA["lr"], betas=tuple(LORA["betas"]), eps=LORA["eps"], weight_decay=LORA["weight_decay"]
    )
    sched = get_cosine_schedule_with_warmup(
        opt, num_warmup_steps=LORA["warmup_steps"], num_training_steps=LORA["total_steps"]
    )
    acc, mb = LORA["grad_accumulation"], LORA["micro_batch"]
    steps = []
    for k in range(LORA["total_steps"]):
        losses = []
        for j in range(acc):
            lo = k * acc * mb + j * mb
            x = batch(blocks, lo, lo + mb)
            loss = model(input_ids=x, labels=x).loss
            (loss / acc).backward()
            losses.append(loss.item())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm=LORA["max_grad_norm"]))
        lr = float(sched.get_last_lr()[0])
        opt.step()
        sched.step()
        opt.zero_grad()
        steps.append({"loss": sum(losses) / len(losses), "micro_losses": losses, "grad_norm": grad_norm, "lr": lr})
        log(f"  lora step {k}: loss {steps[-1]['loss']:.6f} grad_norm {grad_norm:.6f} lr {lr:.6g}")
    assert steps[-1]["loss"] < steps[0]["loss"], [s["loss"] for s in steps]

    after_sd = save_adapter(model, OUT / "lora-after")
    check_adapter_tensors(after_sd, n_layer)
    assert sorted(after_sd) == sorted(init_sd)
    assert all(float(v.abs().max()) > 0.0 for k, v in after_sd.items() if ".lora_B." in k), "B still zero"
    log("adapter_model.safetensors tensors:")
    for k in sorted(after_sd):
        log(f"  {k} {list(after_sd[k].shape)}")

    model.eval()
    xv = batch(blocks, *VAL_BLOCKS)
    with torch.no_grad():
        val_after = float(model(input_ids=xv, labels=xv).loss)
        with model.disable_adapter():
            val_before = float(model(input_ids=xv, labels=xv).loss)
            base_lp_disabled = token_logprobs(model, blocks[0])
        adapter_lp = token_logprobs(model, blocks[0])
    log(f"  val loss before {val_before:.6f} after {val_after:.6f}")

    merged = model.merge_and_unload()
    assert isinstance(merged, BloomForCausalLM), type(merged)
    merged.eval()
    merged_lp = token_logprobs(merged, blocks[0])
    diff = max(abs(a - b) for a, b in zip(merged_lp, adapter_lp))
    log(f"  merged vs unmerged adapter log-probs: max |diff| {diff:.3g}")
    assert diff < 1e-4, diff

    return {
        **LORA,
        "scaling": LORA["alpha"] / LORA["r"],
        "steps": steps,
        "val_blocks": VAL_BLOCKS,
        "val_loss_before": val_before,
        "val_loss_after": val_after,
        "merged_logprobs": merged_lp,
        "base_logprobs_disabled_adapter": base_lp_disabled,
        "wrapped_modules": wrapped,
        "adapter_tensors": {k: list(after_sd[k].shape) for k in sorted(after_sd)},
    }


def run_full(blocks) -> tuple[dict, list[float]]:
    model = load_base()
    model.eval()
    base_lp = token_logprobs(model, blocks[0])
    model.train()
    params = list(model.parameters())  # the tied embedding appears once
    n_named = len(list(model.transformer.named_parameters()))
    assert len(params) == n_named, (len(params), n_named)
    opt = torch.optim.AdamW(
        params, lr=FULL["lr"], betas=tuple(FULL["betas"]), eps=FULL["eps"], weight_decay=FULL["weight_decay"]
    )
    mb = FULL["micro_batch"]
    steps = []
    for k in range(FULL["total_steps"]):
        x = batch(blocks, k * mb, (k + 1) * mb)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=FULL["max_grad_norm"]))
        lr = float(opt.param_groups[0]["lr"])
        opt.step()
        opt.zero_grad()
        steps.append({"loss": loss.item(), "grad_norm": grad_norm, "lr": lr})
        log(f"  full step {k}: loss {loss.item():.6f} grad_norm {grad_norm:.6f} lr {lr:.6g}")

    sd = {n: p.detach().contiguous().clone() for n, p in model.transformer.named_parameters()}
    assert not any(n.startswith("transformer.") or n.startswith("lm_head") for n in sd), sorted(sd)
    path = OUT / "full-after.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
    log(f"  wrote {path.relative_to(REPO)}: {len(sd)} tensors, {path.stat().st_size} B")
    return {**FULL, "steps": steps, "params_file": "full-after.safetensors", "param_names": sorted(sd)}, base_lp


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    blocks, used = make_blocks()
    log(f"{N_BLOCKS} blocks of {BLOCK} tokens from the first {used} lines of {CORPUS.relative_to(REPO)}")

    log("== LoRA")
    lora = run_lora(blocks)
    log("== full fine-tune")
    full, base_lp = run_full(blocks)
    d = max(abs(a - b) for a, b in zip(base_lp, lora.pop("base_logprobs_disabled_adapter")))
    assert d < 1e-5, f"base log-probs (fresh model vs disable_adapter) differ by {d}"
    lora["base_logprobs"] = base_lp

    ref = {
        "generated_by": "scripts/make_training_fixtures.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "model": MODEL_REL,
        "corpus": "tests/fixtures/corpus_es.txt",
        "block_size": BLOCK,
        "eos_id": EOS,
        "documents_used": used,
        "blocks_note": (
            "first documents_used lines of corpus_es.txt; each non-empty stripped line encoded with "
            "tokenizer.json (no specials added) + eos_id, concatenated, cut into consecutive block_size "
            "blocks, remainder dropped; the first len(blocks) blocks."
        ),
        "loss_note": (
            "transformers model(input_ids=x, labels=x).loss: mean over all B*(T-1) shifted positions of "
            "the (micro-)batch. lora.steps[k].loss = mean of the grad_accumulation micro-batch losses "
            "(each backpropagated as loss/grad_accumulation); grad_norm = pre-clip total L2 norm returned "
            "by clip_grad_norm_; lr = the learning rate the step's optimizer update used."
        ),
        "blocks": blocks,
        "lora": lora,
        "full": full,
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=1) + "\n", encoding="utf-8")

    log("\n==== outputs ====")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            log(f"{h}  {p.stat().st_size:8d}  {p.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
