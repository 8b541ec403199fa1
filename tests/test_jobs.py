"""The job machinery of ``fastattr run`` (fastattr.jobs), in process, on tiny models."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastattr import visualize
from fastattr.jobs import JobConfig, JobError, open_output, run_job
from fastattr.jobs.runner import _ShardBatches
from fastattr.jobs.sources import ImageFolderSource
from fastattr.jobs.spec import shard_seed
from fastattr.jobs.storage import DirectoryLock, ShardStore, atomic_write_bytes, load_shard
from fastattr.methods import METHODS
from fastattr.methods.smoothing import smooth_grad


def tiny_classifier(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)).eval()


def tiny_segmenter():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).eval()


def tiny_data(n=23, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, size, size, generator=g), i % 3, torch.zeros(size, size, dtype=torch.bool))
            for i in range(n)]


METHODS_PLUS = dict(METHODS, smooth_grad=smooth_grad)


def job(out, method="saliency", **kw):
    kw.setdefault("shard_size", 5)
    kw.setdefault("batch_size", 3)
    kw.setdefault("threads", 1)  # faster on a busy machine, and bytes depend on the thread count
    return JobConfig(model="tiny", data="tiny", method=method, out=str(out), quiet=True, **kw)


def run(cfg, model=None, data=None, task="classification", **kw):
    return run_job(cfg, model=model or tiny_classifier(), dataset=data or tiny_data(), task=task,
                   methods=METHODS_PLUS, **kw)


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out, "shards").glob("shard-*.safetensors"))}


def test_output_layout_and_manifest(tmp_path):
    res = run(job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 4}))
    assert (res.num_images, res.num_shards, res.shards_computed) == (23, 5, 5)
    out = open_output(tmp_path / "o")
    m = out.manifest
    assert m["status"] == "complete" and m["job"]["method_options"]["n_steps"] == 4
    assert m["job"]["method_options"]["method"] == "gausslegendre"  # defaults recorded too
    assert [e["index"] for e in m["images"]] == list(range(23))
    assert m["images"][7]["shard"] == "shards/shard-00001.safetensors" and m["images"][7]["row"] == 2
    assert m["versions"]["torch"] == torch.__version__
    # targets recorded = argmax of the model, stored in the shard too
    model = tiny_classifier()
    x = torch.stack([d[0] for d in tiny_data()])
    pred = model(x).argmax(1)
    assert [e["target"] for e in m["images"]] == pred.tolist()
    assert torch.equal(out.shard(1)["targets"], pred[5:10])
    assert torch.equal(out.shard(1)["indices"], torch.arange(5, 10))
    expected = METHODS["integrated_gradients"](model, x, target=pred, n_steps=4)
    torch.testing.assert_close(out.attributions(), expected, rtol=1e-5, atol=1e-6)
    assert m["stats"]["forward_rows"] == 23 + 23 * 4  # argmax + 4 path steps per image
    assert not list(Path(tmp_path, "o").rglob("*.tmp"))


def test_batches_never_cross_shards():
    batches = _ShardBatches([(0, range(0, 5)), (2, range(10, 15))], 3).batches
    assert batches == [(0, [0, 1, 2]), (0, [3, 4]), (2, [10, 11, 12]), (2, [13, 14])]
    assert shard_seed(0, 1) != shard_seed(0, 2) and shard_seed(0, 1) == shard_seed(0, 1)
    assert shard_seed(1, 1) != shard_seed(0, 1)


class Interrupt(Exception):
    pass


def interrupting(fn, after_calls):
    calls = {"n": 0}

    def wrapped(model, inputs, target=None, **kw):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise KeyboardInterrupt
        return fn(model, inputs, target=target, **kw)

    wrapped.__signature__ = __import__("inspect").signature(fn)
    return wrapped


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_interrupt_and_resume_is_identical(tmp_path, fmt):
    """A stochastic method (SmoothGrad) interrupted mid-shard and resumed gives the same bytes."""
    opts = {"n_samples": 3, "stdevs": 0.2}
    ref = run(job(tmp_path / "ref", "smooth_grad", method_options=opts, format=fmt, seed=7))
    cfg = job(tmp_path / "int", "smooth_grad", method_options=opts, format=fmt, seed=7)
    broken = dict(METHODS_PLUS, smooth_grad=interrupting(smooth_grad, 5))  # dies in the 3rd shard
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, model=tiny_classifier(), dataset=tiny_data(), task="classification", methods=broken)
    partial = json.loads((tmp_path / "int" / "manifest.json").read_text())
    assert partial["status"] == "incomplete"
    store = ShardStore(tmp_path / "int", fmt, partial["fingerprint"])
    assert [store.done(k) for k in range(5)] == [True, True, False, False, False]
    res = run(cfg)
    assert (res.shards_skipped, res.shards_computed) == (2, 3)
    a, b = Path(tmp_path, "ref", "shards"), Path(tmp_path, "int", "shards")
    names = sorted(p.name for p in a.glob(f"shard-*.{fmt}"))
    assert names == sorted(p.name for p in b.glob(f"shard-*.{fmt}")) and len(names) == 5
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    ma, mb = open_output(tmp_path / "ref").manifest, open_output(tmp_path / "int").manifest
    assert ma["images"] == mb["images"] and ma["shards"] == mb["shards"]
    # a different seed gives different noise
    other = run(job(tmp_path / "seed", "smooth_grad", method_options=opts, format=fmt, seed=8))
    assert other.num_images == 23
    assert not torch.equal(open_output(tmp_path / "seed").attributions(), open_output(tmp_path / "ref").attributions())


def test_crash_leftovers_are_cleaned_and_redone(tmp_path):
    cfg = job(tmp_path / "o", "saliency")
    run(cfg)
    good = shard_bytes(tmp_path / "o")
    shards = Path(tmp_path, "o", "shards")
    # A writer killed mid-write leaves a temporary file; one killed between data and
    # record leaves a data file without record; a torn file has the wrong size.
    (shards / ".shard-00003.safetensors.deadbeef0000.tmp").write_bytes(b"partial")
    (shards / "shard-00001.json").unlink()
    (shards / "shard-00001.safetensors").write_bytes(b"garbage")
    with open(shards / "shard-00002.safetensors", "r+b") as f:
        f.truncate(100)
    res = run(cfg)
    assert res.shards_computed == 2 and res.shards_skipped == 3
    assert shard_bytes(tmp_path / "o") == good
    assert not list(shards.glob("*.tmp"))


def test_verify_detects_same_size_corruption(tmp_path):
    cfg = job(tmp_path / "o", "saliency")
    run(cfg)
    good = shard_bytes(tmp_path / "o")
    p = Path(tmp_path, "o", "shards", "shard-00004.safetensors")
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    assert run(cfg).shards_computed == 0  # size check only: not noticed
    cfg.verify = True
    assert run(cfg).shards_computed == 1
    assert shard_bytes(tmp_path / "o") == good


def test_atomic_write_failure_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_refuses_other_parameters(tmp_path):
    run(job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 4}))
    with pytest.raises(JobError, match=r"n_steps: 4 \(existing\) vs 5"):
        run(job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 5}))
    with pytest.raises(JobError, match="shard_size"):
        run(job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 4}, shard_size=6))
    with pytest.raises(JobError, match="method"):
        run(job(tmp_path / "o", "saliency"))
    retrained = tiny_classifier()
    with torch.no_grad():
        retrained[0].bias.add_(1e-3)
    with pytest.raises(JobError, match="weights_sha256"):
        run(job(tmp_path / "o", "integrated_gradients", method_options={"n_steps": 4}), model=retrained)
    # the same job again: nothing to do; an explicit default equals the default
    assert run(job(tmp_path / "o", "integrated_gradients",
                   method_options={"n_steps": 4, "method": "gausslegendre"})).shards_computed == 0
    res = run(job(tmp_path / "o", "saliency", overwrite=True, shard_size=10))
    assert res.shards_computed == 3
    assert sorted(p.name for p in Path(tmp_path, "o", "shards").iterdir()) == [
        f"shard-0000{k}.{e}" for k in range(3) for e in ("json", "safetensors")]


def test_refuses_foreign_directory_and_concurrent_job(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="not empty"):
        run(job(tmp_path / "o"))
    (tmp_path / "p").mkdir()
    with DirectoryLock(tmp_path / "p"):
        with pytest.raises(JobError, match="another fastattr job"):
            run(job(tmp_path / "p"))


def test_bad_options_are_reported(tmp_path):
    with pytest.raises(JobError, match="has no option 'n_steps'.*abs"):
        run(job(tmp_path / "o", "saliency", method_options={"n_steps": 3}))
    with pytest.raises(JobError, match="set by the job"):
        run(job(tmp_path / "o", "smooth_grad", method_options={"generator": 1}))
    with pytest.raises(JobError, match="unknown method 'nope'; choose from: .*saliency"):
        run(job(tmp_path / "o", "nope"))
    with pytest.raises(JobError, match="refused its options: n_steps must be at least 1, got 0"):
        run(job(tmp_path / "o2", "integrated_gradients", method_options={"n_steps": 0}))
    assert not (tmp_path / "o2").exists()  # refused before anything was written
    with pytest.raises(JobError, match="--target"):
        run(job(tmp_path / "o3", "saliency", target="nonsense"))


def test_fixed_and_label_targets(tmp_path):
    run(job(tmp_path / "a", "saliency", target="2"))
    assert {e["target"] for e in open_output(tmp_path / "a").images} == {2}
    run(job(tmp_path / "b", "saliency", target="label"))
    images = open_output(tmp_path / "b").images
    assert [e["target"] for e in images] == [i % 3 for i in range(23)] == [e["label"] for e in images]
    run(job(tmp_path / "c", "saliency", target="blue"), classes=["red", "green", "blue"])
    assert {e["target"] for e in open_output(tmp_path / "c").images} == {2}


def test_segmentation_target_is_predicted_foreground(tmp_path):
    model = tiny_segmenter()
    data = [(torch.rand(3, 10, 10), torch.zeros(1, 10, 10), torch.zeros(10, 10, dtype=torch.bool)) for _ in range(5)]
    run(job(tmp_path / "s", "integrated_gradients", method_options={"n_steps": 3}), model=model, data=data,
        task="segmentation")
    out = open_output(tmp_path / "s")
    x = torch.stack([d[0] for d in data])
    with torch.no_grad():
        fg = (model(x) > 0).float()
    assert [e["target"]["pixels"] for e in out.images] == fg.flatten(1).sum(1).long().tolist()
    assert all(e["target"]["kind"] == "predicted_foreground" for e in out.images)
    for i in range(5):
        def score(o, w=fg[i:i + 1]):
            return (o * w).flatten(1).sum(1)
        expected = METHODS["integrated_gradients"](model, x[i:i + 1], target=score, n_steps=3)
        torch.testing.assert_close(out.attributions()[i:i + 1], expected, rtol=1e-5, atol=1e-6)
    # a class of a one-channel model: 1 is the foreground (logit > 0), and there is no class 2
    run(job(tmp_path / "t", "integrated_gradients", method_options={"n_steps": 3}, target="1"), model=model,
        data=data, task="segmentation")
    torch.testing.assert_close(open_output(tmp_path / "t").attributions(), out.attributions())
    with pytest.raises(JobError, match="class 2 is out of range: the model has 1 output channels"):
        run(job(tmp_path / "u", "saliency", target="2"), model=model, data=data, task="segmentation")


def test_heatmaps_written(tmp_path):
    run(job(tmp_path / "h", "guided_backprop", heatmaps=True, limit=7))
    out = open_output(tmp_path / "h")
    assert len(out) == 7
    for e in out.images:
        p = Path(tmp_path, "h", e["heatmap"])
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == (12, 12) and im.mode == "RGB"


def test_image_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "b.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "sub" / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / "a.PNG")
    (tmp_path / "imgs" / "readme.txt").write_text("not an image")
    src = ImageFolderSource(tmp_path / "imgs", size=(12, 12))
    assert src.files == ["a.PNG", "b.png", "sub/a.jpg"]
    for i in range(3):
        item = src[i]
        assert item["image"].shape == (3, 12, 12) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
    square = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    square.save(tmp_path / "imgs" / "c.png")
    src = ImageFolderSource(tmp_path / "imgs", size=12)
    expected = torch.from_numpy(np.array(square)).permute(2, 0, 1).float() / 255
    assert torch.equal(src[src.files.index("c.png")]["image"], expected)  # already the right size: untouched
    cfg = JobConfig(model="tiny", data=str(tmp_path / "imgs"), method="saliency", out=str(tmp_path / "o"),
                    quiet=True, input_size=(12, 12))
    run_job(cfg, model=tiny_classifier(), task="classification", methods=METHODS_PLUS)
    out = open_output(tmp_path / "o")
    assert [e["id"] for e in out.images] == ["a.PNG", "b.png", "c.png", "sub/a.jpg"]
    # an output folder inside the data folder: its heatmaps are not taken as data, also on resume
    inside = JobConfig(model="tiny", data=str(tmp_path / "imgs"), method="saliency", quiet=True, heatmaps=True,
                       out=str(tmp_path / "imgs" / "out"), input_size=(12, 12))
    for _ in range(2):
        res = run_job(inside, model=tiny_classifier(), task="classification", methods=METHODS_PLUS)
        assert res.num_images == 4
    assert res.shards_computed == 0
    assert out.attribution("sub/a.jpg").shape == (3, 12, 12)
    with pytest.raises(JobError, match="does not exist"):
        run_job(JobConfig(model="tiny", data=str(tmp_path / "missing"), method="saliency", out=str(tmp_path / "x"),
                          quiet=True, input_size=(12, 12)), model=tiny_classifier(), task="classification")
    with pytest.raises(JobError, match="no PNG or JPEG"):
        run_job(JobConfig(model="tiny", data=str(tmp_path / "o" / "shards"), method="saliency",
                          out=str(tmp_path / "x"), quiet=True, input_size=(12, 12)), model=tiny_classifier(),
                task="classification")


def test_npy_shards_load(tmp_path):
    run(job(tmp_path / "n", "input_x_gradient", format="npy", dtype="float64"))
    arr = np.load(tmp_path / "n" / "shards" / "shard-00000.npy")
    assert arr.shape == (5, 3, 12, 12) and arr.dtype == np.float64
    assert torch.equal(load_shard(tmp_path / "n" / "shards" / "shard-00000.npy")["attributions"],
                       torch.from_numpy(arr))


def test_visualize_maps():
    a = torch.zeros(3, 8, 8)
    a[0, 2, 3] = -4.0
    a[1, 2, 3] = 1.0  # channel sum -3: absolute 3
    a[2, 5, 5] = 1.5
    m = visualize.attribution_map(a, percentile=100)
    assert m.shape == (8, 8) and float(m.max()) == 1.0
    assert float(m[2, 3]) == 1.0 and float(m[5, 5]) == 0.5 and float(m[0, 0]) == 0.0
    assert float(visualize.attribution_map(a, percentile=100, signed=True)[2, 3]) == -1.0
    assert torch.equal(visualize.attribution_map(torch.zeros(3, 4, 4)), torch.zeros(4, 4))
    img = torch.full((3, 8, 8), 0.5)
    ov = np.asarray(visualize.overlay(img, a, alpha=0.7, dim=1.0))
    assert ov.shape == (8, 8, 3)
    assert (ov[0, 0] == 128).all()  # no attribution: the (gray) image shows through
    assert not (ov[2, 3] == 128).all()
    assert (np.asarray(visualize.overlay(img, a, dim=0.5))[0, 0] == 64).all()
    assert visualize.overlay(img, a, scale=3).size == (24, 24)
    g = visualize.grid([[visualize.to_pil(img), None], [visualize.to_pil(img)] * 2], row_labels=["a", "b"],
                       col_labels=["x", "y"])
    assert g.width > 16 and g.height > 16
    with pytest.raises(ValueError, match="attribution"):
        visualize.overlay(img, torch.zeros(3, 4, 4))
    # A saliency map with a large offset (RISE: the mean score) is shown from its minimum.
    sal = torch.full((1, 8, 8), 0.6)
    sal[0, 2, 3] = 0.7
    rel = visualize.attribution_map(sal, percentile=100, relative=True)
    assert float(rel[2, 3]) == 1.0 and float(rel[0, 0]) == 0.0
    assert float(visualize.attribution_map(sal, percentile=100)[0, 0]) > 0.8  # from zero: washed out
    auto = np.asarray(visualize.overlay(img, sal, alpha=0.7, dim=1.0))
    assert (auto[0, 0] == 128).all() and not (auto[2, 3] == 128).all()
