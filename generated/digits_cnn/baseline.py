"""Baseline training run of class DigitsCNN: nothing ablated.

Every ablation variant of this study is compared with this run, seed by seed.

Model:  ../../examples/digits_cnn.py (class DigitsCNN, sha256 1fb05a23d8aa4276)
Run:    python baseline.py --epochs 8 --seed 0 --out result.json
Made by ablagen 0.1.0; to regenerate, run in this directory:
    ablagen generate ../../examples/digits_cnn.py --out . --dataset build_data --epochs 8 --scheduler cosine --patience 3
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
EPOCHS = 8  # passes over the training data [--epochs]
BATCH_SIZE = 64  # [--batch-size]
LR = 0.003  # learning rate [--lr]
WEIGHT_DECAY = 0.0  # L2 penalty
TARGET_ACC = 0.9  # "epochs to target": first epoch at this val accuracy
CHECKPOINT_EVERY = 1  # epochs between --resume-from checkpoints [--checkpoint-every]
PATIENCE = 3  # early stopping: epochs without val-loss gain (None: off)
DIVERGENCE_FACTOR = 10.0  # diverged: train loss above this times its best
SEED = 0  # model init, data order, dropout [--seed]
DEVICE = "cpu"  # cpu | cuda [--device]


# %% model: embedded from ../../examples/digits_cnn.py; edit that file and regenerate
DROPOUT = 0.1  # read by the model; ablagen's --dropout overrides it in the scripts


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.drop = nn.Dropout(DROPOUT)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.pool(self.act2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))  # a functional activation: its own component
        return self.fc2(self.drop(x))


def build_data():
    """Digits as (x_train, y_train, x_val, y_val): pixels scaled to [0, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    train, val = order[:split], order[split:]
    return x[train], y[train], x[val], y[val]


# %% ablation: none, this is the baseline every variant is compared with
VARIANT = "baseline"
ABLATED_PARAMS = 0  # parameters that no longer affect the output


def ablate(model):
    return model  # nothing is ablated


# %% loss and accuracy, optimizer
loss_fn = F.cross_entropy  # the mean over a batch


def count_correct(output, target):
    """How many labels of a batch the predictions match (a tensor: no host sync)."""
    return (output.argmax(dim=1) == target).sum()


def make_optimizer(model, lr):
    """Adam over all parameters."""
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)


# %% mid-run checkpoints: a killed run resumes after its last saved epoch
def save_run_state(args, parts, generators, run):
    """Save the parts, the RNGs and ``run`` atomically, with a note for ablagen status."""
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(run=run, rng=[random.getstate()] + [g.get_state() for g in generators])
    save_atomic(args.resume_from, lambda tmp: torch.save({VARIANT: state}, tmp))
    note = json.dumps({"epoch": run["epoch"], "variant": VARIANT, "seed": args.seed})
    save_atomic(f"{args.resume_from}.json", lambda tmp: Path(tmp).write_text(note))


def load_run_state(path, parts, generators, run):
    """Restore what save_run_state saved at ``path``; refuse another run's checkpoint."""
    try:
        state = torch.load(path, weights_only=True)[VARIANT]  # another run's: KeyError
        for name, part in parts.items():  # another model shape raises here
            part.load_state_dict(state[name])
    except Exception:  # one line, no traceback: nothing to chain
        raise ResumeRefused(f"{path} is not this run's checkpoint; --restart drops it")
    random.setstate(state["rng"][0])
    for generator, saved in zip(generators, state["rng"][1:]):
        generator.set_state(saved)
    run.update(state["run"])
    print(f"resumed {VARIANT} after epoch {run['epoch']} from {path}", flush=True)


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
    return float(total_loss) / len(x), int(right) / y.numel()  # per label


def train(args):
    """Train the (ablated) model; returns the metrics of the result JSON."""
    device = torch.device(args.device)
    x_train, y_train, x_val, y_val = (
        torch.as_tensor(t, device=device) for t in build_data()
    )
    model = DigitsCNN()  # fresh: the same weights for every variant at one seed
    params_total = sum(p.numel() for p in model.parameters())
    model = ablate(model).to(device)
    optimizer = make_optimizer(model, args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    order = torch.Generator().manual_seed(args.seed)  # the data order of every epoch
    status = "ok"
    run = dict(epoch=0, history=[], epochs_to_target=None, train_time=0.0)
    run.update(best_train_loss=math.inf, best_val_loss=math.inf, stale_epochs=0)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    generators = [torch.default_generator, order]  # dropout; the data order
    if args.resume_from:
        hold_checkpoint(args.resume_from)  # one run per checkpoint file
        if os.path.exists(args.resume_from) and not args.restart:  # else from epoch 1
            load_run_state(args.resume_from, parts, generators, run)
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
        train_acc = int(right) / y_train.numel()  # per label (a token, a pixel, ...)
        val_loss, val_acc = evaluate(model, x_val, y_val, args.batch_size)
        scheduler.step()
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
        if args.resume_from and epoch % (args.checkpoint_every or math.inf) == 0:
            run.update(epoch=epoch)
            save_run_state(args, parts, generators, run)
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
EXIT_CODES = {"ok": 0, "failed": 1, "refused": 2, "diverged": 3}


class ResumeRefused(Exception):
    """--resume-from names another run's checkpoint, or one a live run holds (exit 2)."""


def hold_checkpoint(path):
    """Own ``path`` while this process lives, or refuse it: another process has it."""
    if os.name == "nt":  # no POSIX locks on Windows
        return
    import fcntl

    fd = os.open(f"{path}.lock", os.O_CREAT | os.O_WRONLY)
    try:  # the process's own lock (not its forks'); ablagen run's worker took it here
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another holds it
        raise ResumeRefused(f"{path} is in use by another run; let it end first")


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
    parser.add_argument("--resume-from", default=None)  # mid-run checkpoint file
    parser.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY)
    parser.add_argument("--restart", action="store_true")  # train from epoch 1
    args = parser.parse_args(argv)
    if args.checkpoint_every < 0:
        parser.exit(2, "error: --checkpoint-every must be 0 (no checkpoints) or more\n")
    return args


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
    except ResumeRefused as exc:  # a user error: one line, no traceback, exit 2
        result.update(status="refused", error=f"{VARIANT}: {exc}")
        print(f"error: {result['error']}", file=sys.stderr)
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
