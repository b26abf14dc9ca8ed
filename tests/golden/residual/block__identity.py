"""Ablation block:identity of class ResNet.

block (Block block) -- identity: it is skipped, its input passes straight through.

Model:  ../models/residual.py (class ResNet, sha256 1a02e1564647e609)
Run:    python block__identity.py --epochs 1 --seed 0 --out result.json
Made by ablagen 0.1.0; to regenerate, run in this directory:
    ablagen generate ../models/residual.py --out . --dataset synthetic --components block:identity --components block.lin:zero --components fn.gelu:mean --components 'block.lin[2]:mask' --components out:zero --epochs 1 --task tokens
Needs Python, torch and the model file's imports, never ablagen. Exit codes: EXIT_CODES.
"""

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# %% config: every value is read below; the flags named in brackets override them
EPOCHS = 1  # passes over the training data [--epochs]
BATCH_SIZE = 64  # [--batch-size]
LR = 0.003  # learning rate [--lr]
WEIGHT_DECAY = 0.0  # L2 penalty
SAMPLE_SHAPE = (3, 6)  # one input sample of the model, no batch dimension
NUM_OUTPUTS = 2  # size of the model's last output dimension
VAL_FRACTION = 0.2  # share of the data held out for validation
SPLIT_SEED = 0  # fixes the split: every variant sees the same data
IGNORE_INDEX = -100  # target tokens with this value are not scored
TARGET_ACC = 0.9  # "epochs to target": first epoch at this val accuracy
PATIENCE = None  # early stopping: epochs without val-loss gain (None: off)
DIVERGENCE_FACTOR = 10.0  # diverged: train loss above this times its best
SEED = 0  # model init, data order, dropout [--seed]
DEVICE = "cpu"  # cpu | cuda [--device]


# %% model: embedded from ../models/residual.py; edit that file and regenerate
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return F.gelu(self.lin(x)) + x


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.block(x))


# %% ablation: block (Block block) -- identity: it is skipped, its input passes straight through
VARIANT = "block:identity"
ABLATED_PARAMS = 42  # parameters that no longer affect the output


def ablate(model):
    """Ablate block (Block): it is skipped, its input passes straight through."""
    model.block = nn.Identity()  # block: skipped
    return model


# %% data: 512 seeded synthetic samples, 0.2 held out
SYNTHETIC_SAMPLES = 512  # train + validation samples


def load_data():
    """Seeded synthetic data shaped like the model's input; one label per position, the
    largest score of a fixed random projection of its features, so there is something
    to learn."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    x = torch.randn((SYNTHETIC_SAMPLES, *SAMPLE_SHAPE), generator=generator)
    positions = x.reshape(len(x), SAMPLE_SHAPE[0], -1)  # (samples, positions, features)
    projection = torch.randn(positions.shape[2], NUM_OUTPUTS, generator=generator)
    y = (positions @ projection).argmax(dim=2)  # one label per position
    return split(x, y)


def split(x, y):
    """A train/validation split fixed by SPLIT_SEED: every variant sees the same data."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, round(VAL_FRACTION * len(x)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


# %% loss and accuracy (per token), optimizer
def loss_fn(output, target):
    """The mean cross-entropy over every token of a batch (IGNORE_INDEX skipped)."""
    scores = output
    return F.cross_entropy(
        scores.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX
    )


def count_correct(output, target):
    """Tokens tagged right, IGNORE_INDEX skipped (a tensor: no host sync)."""
    return ((output.argmax(dim=-1) == target) & (target != IGNORE_INDEX)).sum()


def count_labels(target):
    """Tokens that are scored: the accuracy's denominator."""
    return (target != IGNORE_INDEX).sum()


def make_optimizer(model, lr):
    """Adam over all parameters."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)


# %% training loop
@torch.no_grad()
def evaluate(model, x, y, batch_size):
    """(mean loss, accuracy) on held-out data, in eval mode."""
    model.eval()
    total_loss, right = 0.0, 0
    for inputs, target in zip(x.split(batch_size), y.split(batch_size)):
        output = model(inputs)
        total_loss += loss_fn(output, target) * len(target)
        right += count_correct(output, target)
    return float(total_loss) / len(x), int(right) / int(count_labels(y))  # per label


def train(args):
    """Train the (ablated) model; returns the metrics of the result JSON."""
    device = torch.device(args.device)
    x_train, y_train, x_val, y_val = (t.to(device) for t in load_data())
    model = ResNet()  # fresh: the same weights for every variant at one seed
    params_total = sum(p.numel() for p in model.parameters())
    model = ablate(model).to(device)
    optimizer = make_optimizer(model, args.lr)
    order = torch.Generator().manual_seed(args.seed)  # the data order of every epoch
    status = "ok"
    run = dict(epoch=0, history=[], epochs_to_target=None, train_time=0.0)
    run.update(best_train_loss=math.inf, best_val_loss=math.inf, stale_epochs=0)
    for epoch in range(run["epoch"] + 1, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        model.train()
        total_loss, right = 0.0, 0  # summed on the device, read once per epoch
        permutation = torch.randperm(len(x_train), generator=order).to(device)
        for batch in permutation.split(args.batch_size):
            output = model(x_train[batch])
            loss = loss_fn(output, y_train[batch])
            total_loss += loss.detach() * len(batch)
            right += count_correct(output, y_train[batch])
            if not loss.requires_grad:  # the ablation cut every weight off
                continue
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        train_loss = float(total_loss) / len(x_train)  # waits for the epoch's last step
        run["train_time"] += time.perf_counter() - start
        train_acc = int(right) / int(
            count_labels(y_train)
        )  # per label (a token, a pixel, ...)
        val_loss, val_acc = evaluate(model, x_val, y_val, args.batch_size)
        row = dict(epoch=epoch, lr=lr, train_loss=train_loss, train_acc=train_acc)
        row.update(val_loss=val_loss, val_acc=val_acc)
        run["history"].append(row)
        print(f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f}", end=" ")
        print(f"val loss {val_loss:.4f} val acc {val_acc:.4f}", flush=True)
        exploded = train_loss > DIVERGENCE_FACTOR * run["best_train_loss"]
        if exploded or not math.isfinite(train_loss + val_loss):
            status = "diverged"
            break
        run["best_train_loss"] = min(run["best_train_loss"], train_loss)
        if val_acc >= TARGET_ACC and run["epochs_to_target"] is None:
            run["epochs_to_target"] = epoch
        improved = val_loss < run["best_val_loss"]
        run["stale_epochs"] = 0 if improved else run["stale_epochs"] + 1
        run["best_val_loss"] = min(run["best_val_loss"], val_loss)
        if PATIENCE and run["stale_epochs"] >= PATIENCE:
            print(f"early stopping: no val-loss gain for {PATIENCE} epochs")
            break
    if args.checkpoint:
        save_atomic(args.checkpoint, lambda path: torch.save(model.state_dict(), path))
    history = run["history"]
    samples = len(x_train) * len(history)
    gpu_memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return {
        "status": status,
        "history": history,
        "final": {k: v for k, v in history[-1].items() if k not in ("epoch", "lr")},
        "epochs_run": len(history),
        "epochs_to_target": run["epochs_to_target"],
        "params_total": params_total,
        "params_effective": params_total - ABLATED_PARAMS,
        "model_bytes": sum(t.nbytes for t in model.state_dict().values()),
        "samples_per_s": samples / run["train_time"] if run["train_time"] else None,
        "peak_memory_bytes": gpu_memory,  # on CPU, `ablagen run` measures it
    }


# %% command line, determinism, result JSON
EXIT_CODES = {"ok": 0, "failed": 1, "diverged": 3}


def parse_args(argv=None):
    """The flags; each one's default is the config value of the same name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default=DEVICE, choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="write the JSON result here")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--checkpoint", default=None, help="save the weights here")
    return parser.parse_args(argv)


def save_atomic(path, write):
    """Write via a temporary file and a rename: never a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def json_safe(value):
    """NaN and infinities as None (JSON has no such numbers), in dicts and lists too."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv=None):
    args = parse_args(argv)
    random.seed(args.seed)  # the same seed, the same run on CPU
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    result = dict(schema=1, variant=VARIANT, seed=args.seed, epochs=args.epochs)
    result.update(device=args.device, error=None)
    try:
        result["gpu"] = torch.cuda.get_device_name() if args.device == "cuda" else None
        result.update(train(args))
    except Exception as exc:  # the run failed: say so in the result, exit 1
        traceback.print_exc()
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    result["wall_time_s"] = time.perf_counter() - started
    if args.out:
        text = json.dumps(json_safe(result), indent=2, sort_keys=True)
        save_atomic(args.out, lambda path: Path(path).write_text(text))
    print(f"{VARIANT}: {result['status']} in {result['wall_time_s']:.1f}s")
    return EXIT_CODES[result["status"]]


if __name__ == "__main__":
    sys.exit(main())
