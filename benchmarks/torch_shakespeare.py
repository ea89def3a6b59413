#!/usr/bin/env python
"""nanoGPT's character-level Shakespeare recipe in plain PyTorch: the reference for our result.

A re-implementation (not a copy) of what nanoGPT's `train.py` does for

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False \
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 \
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

whose README reports "val loss 1.88". Same data (`data/shakespeare_char/prepare.py`:
the file's 65 sorted characters, first 90% train), same model (`TorchGPT` with
`bias=False`, exact GELU, normal(0.02) init with residual projections at
0.02 / sqrt(2 * n_layer), tied embeddings), same optimizer (AdamW, decay 0.1 on
every parameter with >= 2 dims -- token and position embeddings included -- none on
the LayerNorm scales; foreach AdamW, as nanoGPT uses on CPU), clip 1.0 after the
backward, nanoGPT's `get_lr` (warmup `lr * (it + 1) / (warmup + 1)`, cosine to
min_lr at lr_decay_iters), and the same consumption of the global torch RNG: model
init, the first batch, then per iteration the `estimate_loss` batches (every
`eval_interval`) and the prefetched next batch, with `torch.manual_seed(seed)`
first. Batches are `torch.randint(len(data) - block_size, (batch_size,))` offsets.

It reports both estimators of the validation loss:
  * nanoGPT's: the mean loss of `eval_iters` random batches (20 x 12 x 64 characters);
  * the whole validation split, cut into consecutive windows of `block_size`
    (every character but the first is a target once), which is what
    `llmos train` reports for `experiments/shakespeare_char`.
At the end it also draws many independent `eval_iters`-batch estimates (from a
separate generator) to show how far a single one scatters around the full-split value.

    python benchmarks/torch_shakespeare.py                     # seed 1337, ~2000 steps
    python benchmarks/torch_shakespeare.py --seed=0 --json=/tmp/torch_seed0.json

Needs PyTorch (`pip install -e '.[reference]'`) and the data directory
(`LLMOS_DATA_DIR`, default `../shared/data`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torch_gpt import TorchGPT, TorchGPTConfig, make_adamw  # noqa: E402


def default_data_file() -> str:
    root = os.environ.get("LLMOS_DATA_DIR") or os.path.join(HERE, "..", "..", "shared", "data")
    return os.path.join(root, "tinyshakespeare", "input.txt")


def load_splits(path: str, extra_ids: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """nanoGPT's prepare.py: ids of sorted(set(text)); first int(0.9 n) characters train.

    `extra_ids` shifts every character id up by that many never-seen ids (llmos_jax's
    character vocabulary has 3: pad, EOS, UNK), to measure what the unused rows cost.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i + extra_ids for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:], len(chars) + extra_ids


def get_lr(it: int, *, learning_rate: float, warmup_iters: int, lr_decay_iters: int,
           min_lr: float, warmup_from_zero: bool = False) -> float:
    """nanoGPT's schedule, as a function of the iteration about to run.

    `warmup_from_zero` is the warmup before nanoGPT's Dec 2024 fix,
    `lr * it / warmup_iters` (iteration 0 at rate 0), in force when its README
    recorded 1.88.
    """
    if it < warmup_iters:
        if warmup_from_zero:
            return learning_rate * it / warmup_iters
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


class RandomWindows:
    """nanoGPT's get_batch: `batch_size` windows at offsets from randint(len - block_size)."""

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, device: str = "cpu"):
        self.data = torch.from_numpy(data)
        self.block_size, self.batch_size, self.device = block_size, batch_size, device

    def __call__(self, generator: torch.Generator | None = None):
        ix = torch.randint(len(self.data) - self.block_size, (self.batch_size,),
                           generator=generator)
        x = torch.stack([self.data[i:i + self.block_size] for i in ix])
        y = torch.stack([self.data[i + 1:i + 1 + self.block_size] for i in ix])
        return x.to(self.device), y.to(self.device)


def loss_of(model: TorchGPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


@torch.no_grad()
def estimate(model: TorchGPT, batches: RandomWindows, eval_iters: int,
             generator: torch.Generator | None = None) -> float:
    """nanoGPT's estimate_loss for one split: the mean of `eval_iters` batch losses."""
    model.eval()
    losses = [loss_of(model, *batches(generator)).item() for _ in range(eval_iters)]
    model.train()
    return float(np.mean(losses))


@torch.no_grad()
def full_split_loss(model: TorchGPT, data: np.ndarray, block_size: int,
                    rows_per_forward: int = 256) -> float:
    """Mean next-character loss over the whole split, in consecutive windows of block_size."""
    model.eval()
    device = next(model.parameters()).device
    starts = list(range(0, len(data) - 1, block_size))
    total, count = 0.0, 0
    full = [s for s in starts if s + block_size + 1 <= len(data)]
    tensor = torch.from_numpy(data)
    for i in range(0, len(full), rows_per_forward):
        chunk = full[i:i + rows_per_forward]
        x = torch.stack([tensor[s:s + block_size] for s in chunk]).to(device)
        y = torch.stack([tensor[s + 1:s + 1 + block_size] for s in chunk]).to(device)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    for s in starts[len(full):]:  # the last, shorter window
        x = tensor[s:len(data) - 1][None].to(device)
        y = tensor[s + 1:len(data)][None].to(device)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_file", default=default_data_file())
    parser.add_argument("--seed", type=int, default=1337, help="torch.manual_seed (nanoGPT: 1337)")
    parser.add_argument("--max_iters", type=int, default=2000)
    parser.add_argument("--lr_decay_iters", type=int, default=2000)
    parser.add_argument("--eval_interval", type=int, default=250)
    parser.add_argument("--eval_iters", type=int, default=20)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--min_lr", type=float, default=1e-4)
    parser.add_argument("--warmup_iters", type=int, default=100)
    parser.add_argument("--weight_decay", type=float, default=0.1)
    parser.add_argument("--beta1", type=float, default=0.9)
    parser.add_argument("--beta2", type=float, default=0.99)
    parser.add_argument("--grad_clip", type=float, default=1.0)
    parser.add_argument("--decay_embeddings", type=int, default=1,
                        help="1: decay every >=2-D parameter (nanoGPT since May 2023); 0: not "
                        "the token and position embeddings (nanoGPT before)")
    parser.add_argument("--gelu", choices=["none", "tanh"], default="none",
                        help="GELU approximation: none = nn.GELU() (nanoGPT since May 2023), "
                        "tanh = its earlier new_gelu")
    parser.add_argument("--warmup_from_zero", type=int, default=0,
                        help="1: nanoGPT's warmup before Dec 2024, lr * it / warmup_iters")
    parser.add_argument("--extra_ids", type=int, default=0,
                        help="never-used ids below the characters (3 = llmos_jax's 68-id vocab)")
    parser.add_argument("--estimate_draws", type=int, default=100,
                        help="independent eval_iters-batch estimates of the final val loss")
    parser.add_argument("--position_embedding", choices=["learned", "rope"], default="learned",
                        help="nanoGPT's learned table, or rotary embedding as llmos_jax's 'rope'")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--device", default="cpu",
                        help="torch device, e.g. cuda (TF32 matmuls allowed there, as nanoGPT does)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)

    train_data, val_data, vocab_size = load_splits(args.data_file, args.extra_ids)
    torch.manual_seed(args.seed)
    model = TorchGPT(TorchGPTConfig(
        vocab_size=vocab_size, num_layers=args.n_layer, num_heads=args.n_head,
        embed_dim=args.n_embd, max_len=args.block_size, bias=False, gelu_approximate=args.gelu,
        dropout=args.dropout, position_embedding=args.position_embedding)).to(args.device)
    optimizer = make_adamw(model, learning_rate=args.learning_rate, b1=args.beta1,
                           b2=args.beta2, eps=1e-8, weight_decay=args.weight_decay,
                           implementation="foreach",
                           decay_embeddings=bool(args.decay_embeddings))
    batches = {split: RandomWindows(data, args.block_size, args.batch_size, args.device)
               for split, data in (("train", train_data), ("val", val_data))}
    positions = model.wpe.weight.numel() if model.wpe is not None else 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocab {vocab_size}; "
          f"{model.num_params():,} parameters ({model.num_params() - positions:,} "
          f"without positions, nanoGPT's count); {args.position_embedding} positions; "
          f"seed {args.seed}", flush=True)

    history = []
    x, y = batches["train"]()
    started = time.perf_counter()
    train_seconds = 0.0
    it = 0
    while True:
        lr = get_lr(it, learning_rate=args.learning_rate, warmup_iters=args.warmup_iters,
                    lr_decay_iters=args.lr_decay_iters, min_lr=args.min_lr,
                    warmup_from_zero=bool(args.warmup_from_zero))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if it % args.eval_interval == 0:
            point = {"iter": it,
                     "train_estimate": estimate(model, batches["train"], args.eval_iters),
                     "val_estimate": estimate(model, batches["val"], args.eval_iters),
                     "val_full": full_split_loss(model, val_data, args.block_size)}
            history.append(point)
            print(f"step {it}: train loss {point['train_estimate']:.4f}, val loss "
                  f"{point['val_estimate']:.4f} (nanoGPT's {args.eval_iters}-batch estimates); "
                  f"full val split {point['val_full']:.4f}", flush=True)
        if it >= args.max_iters:
            break
        step_start = time.perf_counter()
        loss = loss_of(model, x, y)
        x, y = batches["train"]()  # nanoGPT prefetches the next batch here
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - step_start
        it += 1
    wall = time.perf_counter() - started

    final = history[-1]
    generator = torch.Generator().manual_seed(12345)
    draws = [estimate(model, batches["val"], args.eval_iters, generator)
             for _ in range(args.estimate_draws)]
    result = {
        "args": vars(args), "seed": args.seed, "iters": args.max_iters, "val_full": final["val_full"],
        "val_estimate": final["val_estimate"], "train_estimate": final["train_estimate"],
        "train_full": full_split_loss(model, train_data, args.block_size),
        "estimate_draws": {"n": len(draws), "mean": statistics.mean(draws),
                           "stdev": statistics.stdev(draws) if len(draws) > 1 else 0.0,
                           "min": min(draws), "max": max(draws),
                           "share_le_1.88": sum(d <= 1.88 for d in draws) / max(len(draws), 1)},
        "wall_seconds": wall, "train_seconds": train_seconds,
        "tokens_per_second": args.max_iters * args.batch_size * args.block_size / train_seconds,
        "history": history,
    }
    d = result["estimate_draws"]
    print(f"final (iter {args.max_iters}): full val {result['val_full']:.4f}; nanoGPT estimate "
          f"val {result['val_estimate']:.4f}, train {result['train_estimate']:.4f}; full train "
          f"{result['train_full']:.4f}")
    print(f"{d['n']} more independent {args.eval_iters}-batch val estimates: mean {d['mean']:.4f}, "
          f"stdev {d['stdev']:.4f}, range {d['min']:.4f}-{d['max']:.4f}, "
          f"{100 * d['share_le_1.88']:.0f}% <= 1.88")
    print(f"wall {wall:.0f} s (training steps {train_seconds:.0f} s, "
          f"{result['tokens_per_second']:.0f} tokens/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
