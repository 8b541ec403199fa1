"""Training of the "shapes" classifiers (``shapes-vgg``, ``shapes-resnet``)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .. import data as fdata
from ..models import _arch
from . import _common


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    """Accuracy of ``model`` on uint8 images (N, H, W, 3) and int labels (N,)."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = model(_common.to_float_cl(images[i : i + batch]))
        correct += int((logits.argmax(1) == labels[i : i + batch]).sum())
    return correct / len(images)


def train(name: str, cfg: dict, log=print):
    """Train ``name`` with the options in ``cfg``; returns (model, metadata)."""
    _common.make_deterministic(cfg["seed"], cfg["threads"])
    t_start = time.time()
    n_train, epochs, batch = cfg["train_size"], cfg["epochs"], cfg["batch_size"]

    tr_x, tr_y, _ = _common.dataset_arrays("shapes", "train", n_train, cfg["workers"], log)
    va_x, va_y, _ = _common.dataset_arrays("shapes", "val", cfg["val_size"], cfg["workers"], log)
    t_data = time.time() - t_start
    mean, std = _common.channel_stats(tr_x[:2000])
    tr_x, tr_y = torch.from_numpy(tr_x), torch.from_numpy(tr_y)
    va_x, va_y = torch.from_numpy(va_x), torch.from_numpy(va_y)

    model = _arch.build(name)
    with torch.no_grad():
        model.normalize.mean.copy_(torch.tensor(mean))
        model.normalize.std.copy_(torch.tensor(std))
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPU
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = math.ceil(n_train / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    g = torch.Generator().manual_seed(cfg["seed"])
    history = []
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n_train, generator=g)
        total, seen = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch : (s + 1) * batch]
            x = _common.dihedral(_common.to_float_cl(tr_x[idx]), g)
            loss = F.cross_entropy(model(x), tr_y[idx], label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val_acc = evaluate(model, va_x, va_y)
        history.append({"epoch": epoch + 1, "train_loss": round(total / seen, 5), "val_accuracy": val_acc,
                        "seconds": round(time.time() - t0, 1)})
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, val acc {val_acc:.4f} ({time.time() - t0:.0f}s)")
    t_train = time.time() - t_start

    te_x, te_y, _ = _common.dataset_arrays("shapes", "test", cfg["test_size"], cfg["workers"], log)
    test_acc = evaluate(model, torch.from_numpy(te_x), torch.from_numpy(te_y))
    log(f"  test accuracy {test_acc:.4f} on {cfg['test_size']} images")
    model.eval()
    meta = {
        "name": name,
        "task": "classification",
        "dataset": "shapes",
        "classes": fdata.classes("shapes"),
        "input_size": [3, 64, 64],
        "input_range": [0.0, 1.0],
        "mean": mean,
        "std": std,
        "output": "logits (B, 5)",
        "metrics": {
            "test_accuracy": test_acc,
            "test_images": cfg["test_size"],
            "val_accuracy": history[-1]["val_accuracy"],
            "val_images": cfg["val_size"],
        },
        "training": {
            "command": f"python -m fastattr.training {name}",
            "config": cfg,
            "history": history,
            "data_seconds": round(t_data, 1),
            "total_seconds": round(t_train, 1),
            "environment": _common.environment(cfg["threads"]),
        },
    }
    return model, meta
