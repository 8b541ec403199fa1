"""Training of the "lesions" U-Net (``lesions-unet``): random crops with
flips / rotations, binary cross-entropy + soft Dice, evaluated on whole
128×128 held-out images."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from .. import data as fdata
from ..models import _arch
from . import _common


@torch.no_grad()
def dice_scores(model, images: torch.Tensor, masks: torch.Tensor, batch: int = 25) -> dict:
    """Dice of the thresholded (logit > 0) prediction on uint8 images (N, H, W, 3)
    and bool masks (N, H, W): over all pixels pooled ("dice") and the mean of
    per-image Dice ("mean_image_dice")."""
    model.eval()
    inter = pred_sum = true_sum = 0
    per_image = []
    for i in range(0, len(images), batch):
        pred = model(_common.to_float_cl(images[i : i + batch]))[:, 0] > 0
        true = masks[i : i + batch]
        it = (pred & true).flatten(1).sum(1)
        ps, ts = pred.flatten(1).sum(1), true.flatten(1).sum(1)
        inter, pred_sum, true_sum = inter + int(it.sum()), pred_sum + int(ps.sum()), true_sum + int(ts.sum())
        per_image += (2 * it / (ps + ts).clamp(min=1)).tolist()
    return {
        "dice": 2 * inter / max(pred_sum + true_sum, 1),
        "mean_image_dice": sum(per_image) / len(per_image),
        "min_image_dice": min(per_image),
    }


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def train(name: str, cfg: dict, log=print):
    _common.make_deterministic(cfg["seed"], cfg["threads"])
    t_start = time.time()
    n_train, epochs, batch, crop = cfg["train_size"], cfg["epochs"], cfg["batch_size"], cfg["crop"]

    tr_x, _, tr_m = _common.dataset_arrays("lesions", "train", n_train, cfg["workers"], log)
    va_x, _, va_m = _common.dataset_arrays("lesions", "val", cfg["val_size"], cfg["workers"], log)
    t_data = time.time() - t_start
    mean, std = _common.channel_stats(tr_x[:500])
    tr_x, tr_m = torch.from_numpy(tr_x), torch.from_numpy(tr_m)
    va_x, va_m = torch.from_numpy(va_x), torch.from_numpy(va_m)
    size = tr_x.shape[1]

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
            # One random crop per image, then a random flip / 90° rotation.
            oy = torch.randint(0, size - crop + 1, (len(idx),), generator=g)
            ox = torch.randint(0, size - crop + 1, (len(idx),), generator=g)
            xs = torch.stack([tr_x[i, y : y + crop, x : x + crop] for i, y, x in zip(idx.tolist(), oy.tolist(), ox.tolist())])
            ms = torch.stack([tr_m[i, y : y + crop, x : x + crop] for i, y, x in zip(idx.tolist(), oy.tolist(), ox.tolist())])
            x, m = _common.dihedral(_common.to_float_cl(xs), g, ms[:, None].float())
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, m) + soft_dice_loss(logits, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val = dice_scores(model, va_x, va_m)
        history.append({"epoch": epoch + 1, "train_loss": round(total / seen, 5),
                        "val_dice": round(val["dice"], 5), "seconds": round(time.time() - t0, 1)})
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, val Dice {val['dice']:.4f} "
            f"(per image {val['mean_image_dice']:.4f}) ({time.time() - t0:.0f}s)")
    t_train = time.time() - t_start

    te_x, _, te_m = _common.dataset_arrays("lesions", "test", cfg["test_size"], cfg["workers"], log)
    test = dice_scores(model, torch.from_numpy(te_x), torch.from_numpy(te_m))
    log(f"  test Dice {test['dice']:.4f} (mean per image {test['mean_image_dice']:.4f}) on {cfg['test_size']} images")
    model.eval()
    meta = {
        "name": name,
        "task": "segmentation",
        "dataset": "lesions",
        "classes": fdata.classes("lesions"),
        "input_size": [3, size, size],
        "input_range": [0.0, 1.0],
        "mean": mean,
        "std": std,
        "output": "lesion logits (B, 1, H, W); lesion where > 0",
        "metrics": {
            "test_dice": test["dice"],
            "test_mean_image_dice": test["mean_image_dice"],
            "test_min_image_dice": test["min_image_dice"],
            "test_images": cfg["test_size"],
            "val_dice": history[-1]["val_dice"],
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
