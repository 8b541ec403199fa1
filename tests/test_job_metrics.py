"""``fastattr run --metrics``: per-image AUCs and pointing-game hits stored
beside the attributions (shard records and manifest), their means printed, the
option validated before anything is written; on tiny models, checked against
direct calls of fastattr.metrics (whose exactness tests/test_metrics.py pins
against the spec oracle)."""

import json

import pytest
import torch
from torch import nn

from fastattr import cli, metrics, targets
from fastattr.jobs import JobConfig, JobError, run_job
from fastattr.jobs.storage import ShardStore
from fastattr.methods import METHODS
from fastattr.models import Normalize


def tiny_classifier():
    torch.manual_seed(0)
    norm = Normalize(3)
    norm.mean.copy_(torch.tensor([0.4, 0.5, 0.6]))
    norm.std.copy_(torch.tensor([0.2, 0.25, 0.3]))
    return nn.Sequential(norm, nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def tiny_segmenter():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).eval()


def tiny_data(n=7, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.bool)
        r, c = (3 * i) % 8, (5 * i) % 8
        mask[r:r + 4, c:c + 4] = True
        items.append((torch.rand(3, size, size, generator=g), i % 3, mask))
    return items


def job(out, method="saliency", **kw):
    kw.setdefault("shard_size", 4)
    kw.setdefault("batch_size", 3)
    kw.setdefault("threads", 1)
    kw.setdefault("quiet", True)
    return JobConfig(model="tiny", data="tiny", method=method, out=str(out), **kw)


def test_metrics_are_stored_per_image_and_equal_direct_calls(tmp_path, capsys):
    data = tiny_data()
    model = tiny_classifier()
    cfg = job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 3},
              metrics=("deletion", "insertion", "pointing"), quiet=False, progress=False)
    res = run_job(cfg, model=model, dataset=data, task="classification", methods=METHODS)
    manifest = json.loads(res.manifest.read_text())
    assert manifest["job"]["metrics"] == ["deletion", "insertion", "pointing"]
    protocol = manifest["job"]["metrics_protocol"]
    assert protocol["step"] == 12 and protocol["center"] == pytest.approx([0.4, 0.5, 0.6])

    x = torch.stack([d[0] for d in data])
    masks = torch.stack([d[2] for d in data])
    with torch.no_grad():
        t = model(x).argmax(1)
    attr = METHODS["integrated_gradients"](model, x, target=t, n_steps=3)
    sal = metrics.heatmap(attr)
    center = [0.4, 0.5, 0.6]
    dele = metrics.deletion(model, x, sal, target=t, step=12, center=center).auc
    ins = metrics.insertion(model, x, sal, target=t, step=12, center=center).auc
    hits = metrics.pointing_game(sal, masks, tolerance=15 * 12 / 224)
    energy = metrics.energy_pointing_game(sal, masks)
    store = ShardStore(tmp_path / "o", "safetensors", manifest["fingerprint"])
    shard_images = [img for k in range(2) for img in store.read_record(k)["images"]]
    for i, (entry, rec) in enumerate(zip(manifest["images"], shard_images)):
        assert entry["metrics"] == rec["metrics"]
        m = entry["metrics"]
        assert m["deletion_auc"] == pytest.approx(float(dele[i]), abs=1e-6)
        assert m["insertion_auc"] == pytest.approx(float(ins[i]), abs=1e-6)
        assert m["pointing_hit"] == bool(hits[i])
        assert m["energy_pointing"] == pytest.approx(float(energy[i]), abs=1e-6)
    means = manifest["metrics"]
    assert means["deletion_auc"]["n"] == 7
    assert means["deletion_auc"]["mean"] == pytest.approx(float(dele.mean()), abs=1e-6)
    assert means["pointing_hit"]["mean"] == pytest.approx(float(hits.double().mean()), abs=1e-12)
    err = capsys.readouterr().err
    assert "metrics over 7 images (means): deletion_auc" in err and "pointing_hit" in err


def test_jobs_without_metrics_keep_their_spec(tmp_path):
    res = run_job(job(tmp_path / "o"), model=tiny_classifier(), dataset=tiny_data(), task="classification",
                  methods=METHODS)
    manifest = json.loads(res.manifest.read_text())
    assert "metrics" not in manifest["job"] and "metrics_protocol" not in manifest["job"]
    assert "metrics" not in manifest and all("metrics" not in e for e in manifest["images"])


def test_segmentation_region_deletion(tmp_path):
    data = [(img, None, m) for img, _, m in tiny_data(4)]
    model = tiny_segmenter()
    cfg = job(tmp_path / "o", "saliency", metrics=("deletion", "insertion"))
    res = run_job(cfg, model=model, dataset=data, task="segmentation", methods=METHODS)
    manifest = json.loads(res.manifest.read_text())
    x = torch.stack([d[0] for d in data])
    with torch.no_grad():
        w = (model(x) > 0).float()
    tgt = targets.region(w)
    sal = metrics.heatmap(METHODS["saliency"](model, x, target=tgt))
    want = metrics.deletion(model, x, sal, target=tgt, step=12, activation="auto").auc
    got = [e["metrics"]["deletion_auc"] for e in manifest["images"]]
    assert got == pytest.approx(want.tolist(), abs=1e-5)


def test_bad_metrics_are_refused_before_writing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        cli.main(["run", "--model", "shapes-vgg", "--data", "bundled:shapes", "--method", "saliency", "--out",
                  str(out), "--metrics", "deletion,auc"])
    assert not out.exists()
    for bad, match in ((("deletion", "deletion"), "names a metric twice"), (("energy",), "unknown metric 'energy'")):
        with pytest.raises(JobError, match=match):
            run_job(job(out, metrics=bad), model=tiny_classifier(), dataset=tiny_data(), methods=METHODS)
        assert not out.exists()


def test_pointing_without_masks_is_refused_before_writing(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (12, 12), (10, 20, 30)).save(folder / "a.png")
    out = tmp_path / "o"
    cfg = JobConfig(model="tiny", data=str(folder), method="saliency", out=str(out), quiet=True,
                    input_size=(12, 12), metrics=("pointing",))
    with pytest.raises(JobError, match="--metrics pointing needs a ground-truth mask per image"):
        run_job(cfg, model=tiny_classifier(), task="classification", methods=METHODS)
    assert not out.exists()
