"""Jobs on real folders (issue 13): unreadable images, resume by image identity,
write failures, seeded random weights, dict outputs, torchvision segmentation
models, RGBA and crop boxes, progress in logs, reading results back, memory budget."""

import errno
import json
import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastattr import cli, engine
from fastattr.jobs import JobConfig, JobError, Results, run_job
from fastattr.jobs import storage
from fastattr.jobs.loading import load_model, weights_digest
from fastattr.jobs.runner import heatmap_relpath
from fastattr.jobs.sources import ImageFolderSource
from fastattr.methods import METHODS
from utils import TINY_MODELS_SOURCE

SIZE = 12


def tiny_classifier(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)).eval()


def write_png(path, seed, size=SIZE, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, len(mode)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


def folder(root, names, seed0=0):
    for i, name in enumerate(names):
        write_png(root / name, seed0 + i)
    return root


def fjob(out, data, method="saliency", **kw):
    kw.setdefault("shard_size", 4)
    kw.setdefault("batch_size", 2)
    kw.setdefault("threads", 1)
    kw.setdefault("input_size", (SIZE, SIZE))
    kw.setdefault("quiet", True)
    return JobConfig(model="tiny", data=str(data), method=method, out=str(out), **kw)


def frun(cfg, model=None, **kw):
    return run_job(cfg, model=model or tiny_classifier(), task="classification", **kw)


def shard_files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out, "shards").glob("shard-*"))}


def data_files(out):
    """The shard data files (records hold timings, which differ between runs)."""
    return {p.name: p.read_bytes() for p in sorted(Path(out, "shards").glob("shard-*.safetensors"))}


def direct_saliency(path, model=None):
    """The attribution of one image file, computed directly (no job): the oracle."""
    model = model or tiny_classifier()
    with Image.open(path) as im:
        x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    x = x[None]
    target = model(x).argmax(1)
    return METHODS["saliency"](model, x, target=target)[0]


NAMES = [f"img{i:02d}.png" for i in range(12)]


# --------------------------------------------------------------------------- unreadable images


def make_bad_files(root):
    (root / "m_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    write_png(root / "n_trunc.png", 99, size=64)
    data = (root / "n_trunc.png").read_bytes()
    (root / "n_trunc.png").write_bytes(data[: len(data) // 2])
    os.symlink(root / "does-not-exist.png", root / "o_dangling.png")


def test_unreadable_image_fails_naming_the_file_and_keeps_finished_shards(tmp_path):
    data = folder(tmp_path / "d", ["a.png", "b.png", "c.png", "d.png", "e.png", "p.png"])
    make_bad_files(data)
    out = tmp_path / "o"
    with pytest.raises(JobError) as e:
        frun(fjob(out, data))
    msg = str(e.value)
    # the first unreadable file in listing order, named by its path, and what to do
    assert str(data / "m_corrupt.png") in msg and "--on-error skip" in msg
    done = sorted(p.name for p in (out / "shards").glob("*.json"))
    assert done == ["shard-00000.json"]  # a.png..d.png were finished before the corrupt file came up
    kept = shard_files(out)
    # the user removes the bad files; the rerun keeps the finished shard and computes the rest
    for name in ("m_corrupt.png", "n_trunc.png", "o_dangling.png"):
        os.unlink(data / name)
    res = frun(fjob(out, data))
    assert (res.shards_skipped, res.shards_computed, res.images_computed) == (1, 1, 2)
    assert {k: v for k, v in shard_files(out).items() if k in kept} == kept
    assert Results(out).ids() == ["a.png", "b.png", "c.png", "d.png", "e.png", "p.png"]


@pytest.mark.parametrize("bad, why", [("m_corrupt.png", "cannot identify"), ("n_trunc.png", "truncated"),
                                      ("o_dangling.png", "No such file")])
def test_each_kind_of_bad_file_is_named(tmp_path, bad, why):
    data = folder(tmp_path / "d", ["a.png"])
    make_bad_files(data)
    for other in {"m_corrupt.png", "n_trunc.png", "o_dangling.png"} - {bad}:
        os.unlink(data / other)
    with pytest.raises(JobError, match=re.escape(str(data / bad)) + ".*" + why):
        frun(fjob(tmp_path / "o", data))


def test_on_error_skip_records_skipped_images(tmp_path):
    data = folder(tmp_path / "d", ["a.png", "b.png", "c.png", "d.png", "e.png", "p.png"])
    make_bad_files(data)
    out = tmp_path / "o"
    res = frun(fjob(out, data, on_error="skip"))
    assert res.images_skipped == 3 and res.images_computed == 6
    results = Results(out)
    m = results.manifest
    assert m["status"] == "complete" and m["num_images"] == 6 and m["num_skipped"] == 3
    skipped = {s["id"]: s["reason"] for s in results.skipped}
    assert set(skipped) == {"m_corrupt.png", "n_trunc.png", "o_dangling.png"}
    assert "cannot identify" in skipped["m_corrupt.png"] and "truncated" in skipped["n_trunc.png"]
    assert "No such file" in skipped["o_dangling.png"]
    for r in results:
        torch.testing.assert_close(r.attribution, direct_saliency(data / r.id), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="skipped"):
        results["n_trunc.png"]
    # unchanged bad files stay skipped on a rerun, without recomputing anything
    assert frun(fjob(out, data, on_error="skip")).shards_computed == 0
    # a fixed file is computed (its bytes changed)
    os.unlink(data / "n_trunc.png")
    write_png(data / "n_trunc.png", 5)
    res = frun(fjob(out, data, on_error="skip"))
    assert res.images_computed == 1 and Results(out).manifest["num_skipped"] == 2
    torch.testing.assert_close(Results(out)["n_trunc.png"].attribution, direct_saliency(data / "n_trunc.png"))


def test_skip_works_from_the_cli(tmp_path, monkeypatch, capsys):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fa_rel_tiny.py").write_text(TINY_MODELS_SOURCE)
    monkeypatch.syspath_prepend(str(mods))
    data = folder(tmp_path / "d", ["a.png", "b.png"])
    make_bad_files(data)
    args = ["run", "--model", "fa_rel_tiny:classifier", "--data", str(data), "--method", "saliency",
            "--out", str(tmp_path / "o"), "--input-size", str(SIZE), "--threads", "1"]
    assert cli.main(args + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastattr: error: cannot read image") and str(data / "m_corrupt.png") in err
    assert "Traceback" not in err
    assert cli.main(args + ["--on-error", "skip"]) == 0
    assert "3 unreadable images skipped (listed in the manifest)" in capsys.readouterr().err
    assert [s["id"] for s in Results(tmp_path / "o").skipped] == ["m_corrupt.png", "n_trunc.png", "o_dangling.png"]


# --------------------------------------------------------------------------- resume by identity


def test_removing_and_adding_files_keeps_finished_shards(tmp_path):
    data = folder(tmp_path / "d", NAMES)
    out = tmp_path / "o"
    assert frun(fjob(out, data)).shards_computed == 3
    before = shard_files(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    os.unlink(data / "img01.png")                          # from shard 0
    os.unlink(data / "img10.png")                          # from shard 2
    folder(data, ["img05b.png", "zz1.png", "zz2.png"], seed0=100)  # one in the middle, two at the end
    res = frun(fjob(out, data))
    assert (res.shards_skipped, res.shards_computed, res.images_computed) == (3, 1, 3)
    after = shard_files(out)
    assert {k: after[k] for k in before} == before                     # existing shards intact
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir() if p.name in mtimes} == mtimes
    results = Results(out)
    current = sorted(p.name for p in data.iterdir())
    assert results.ids() == current and [e["index"] for e in results.images] == list(range(len(current)))
    for r in results:  # each result is that file's attribution
        torch.testing.assert_close(r.attribution, direct_saliency(data / r.id), rtol=1e-5, atol=1e-6)
        assert r.record["sha256"] == __import__("hashlib").sha256((data / r.id).read_bytes()).hexdigest()
    assert {e["shard"] for e in results.images if e["id"] in ("img05b.png", "zz1.png", "zz2.png")} == {
        "shards/shard-00003.safetensors"}
    # nothing to do on a second rerun
    assert frun(fjob(out, data)).shards_computed == 0


def test_changed_file_is_recomputed(tmp_path):
    data = folder(tmp_path / "d", NAMES)
    out = tmp_path / "o"
    frun(fjob(out, data))
    old = Results(out)["img06.png"].attribution
    before = shard_files(out)
    write_png(data / "img06.png", 1234)  # same name, other pixels
    res = frun(fjob(out, data))
    assert (res.shards_computed, res.images_computed) == (1, 1)
    assert {k: v for k, v in shard_files(out).items() if k in before} == before
    new = Results(out)["img06.png"]
    assert new.record["shard"] == "shards/shard-00003.safetensors"
    torch.testing.assert_close(new.attribution, direct_saliency(data / "img06.png"), rtol=1e-5, atol=1e-6)
    assert not torch.equal(new.attribution, old)


def test_larger_limit_resumes(tmp_path):
    data = folder(tmp_path / "d", NAMES)
    out = tmp_path / "o"
    frun(fjob(out, data, limit=5))
    res = frun(fjob(out, data, limit=12))
    assert (res.shards_skipped, res.images_computed) == (2, 7)
    assert Results(out).ids() == NAMES


# --------------------------------------------------------------------------- write failures


def test_out_not_writable_is_a_clear_error(tmp_path, monkeypatch):
    data = folder(tmp_path / "d", NAMES[:2])
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if self.name == "o":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(JobError, match=r"--out .*o is not writable .*Permission denied"):
        frun(fjob(tmp_path / "o", data))
    monkeypatch.undo()
    # an existing directory without write permission (os.access: root may write anyway)
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with pytest.raises(JobError, match=r"--out .*ro is not writable"):
        frun(fjob(tmp_path / "ro", data))


def test_full_disk_keeps_shards_and_rerun_completes(tmp_path, monkeypatch):
    data = folder(tmp_path / "d", NAMES)
    ref = tmp_path / "ref"
    frun(fjob(ref, data, method="smooth_grad", method_options={"n_samples": 3, "stdevs": 0.2}))
    out = tmp_path / "o"
    real = storage.atomic_write_bytes
    writes = []

    def full_disk(path, data_bytes):
        writes.append(Path(path).name)
        if Path(path).name == "shard-00002.safetensors":
            # the writer got part way: a temporary file exists, then the device is full
            tmp = storage.temp_path(Path(path))
            tmp.write_bytes(data_bytes[:10])
            tmp.unlink()
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real(path, data_bytes)

    monkeypatch.setattr(storage, "atomic_write_bytes", full_disk)
    cfg = fjob(out, data, method="smooth_grad", method_options={"n_samples": 3, "stdevs": 0.2})
    with pytest.raises(JobError, match="no space left on the device of --out .*rerun the same command"):
        frun(cfg)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "shards").glob("*.json")) == ["shard-00000.json", "shard-00001.json"]
    ref_files, kept = data_files(ref), shard_files(out)
    assert data_files(out) == {k: ref_files[k] for k in data_files(out)} and len(data_files(out)) == 2
    assert not list(out.rglob("*.tmp"))
    res = frun(cfg)
    assert (res.shards_skipped, res.shards_computed) == (2, 1)
    assert data_files(out) == ref_files
    assert {k: shard_files(out)[k] for k in kept} == kept
    assert Results(out).manifest["images"] == Results(ref).manifest["images"]


def test_full_disk_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "atomic_write_bytes", full)
    code = cli.main(["run", "--model", "shapes-vgg", "--data", "bundled:shapes", "--method", "saliency", "--out",
                     str(tmp_path / "o"), "--limit", "2", "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no space left" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- seeded random weights


def test_random_weight_models_are_seeded_and_resume(tmp_path):
    spec = "torchvision:resnet18?weights=none"
    state = torch.random.get_rng_state()
    a, _ = load_model(spec, torch.device("cpu"), torch.float32, seed=3)
    b, _ = load_model(spec, torch.device("cpu"), torch.float32, seed=3)
    c, _ = load_model(spec, torch.device("cpu"), torch.float32, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    cfg = dict(model=spec, data="bundled:shapes", method="saliency", input_size=(32, 32), shard_size=2,
               batch_size=2, threads=1, quiet=True, seed=3)
    out = tmp_path / "o"
    run_job(JobConfig(out=str(out), limit=2, **cfg))
    first = shard_files(out)
    res = run_job(JobConfig(out=str(out), limit=4, **cfg))  # resumes: same weights
    assert (res.shards_skipped, res.shards_computed) == (1, 1)
    assert {k: shard_files(out)[k] for k in first} == first
    with pytest.raises(JobError, match="seed: 3 \\(existing\\) vs 5"):
        run_job(JobConfig(out=str(out), limit=4, **dict(cfg, seed=5)))


# --------------------------------------------------------------------------- dict / tuple outputs


class DictSegmenter(nn.Module):
    def __init__(self, as_tuple=False):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
        self.aux = nn.Conv2d(3, 2, 1)
        self.as_tuple = as_tuple

    def forward(self, x):
        if self.as_tuple:
            return self.body(x), self.aux(x)
        return {"out": self.body(x), "aux": self.aux(x)}


def seg_job(out, **kw):
    return JobConfig(model="dictseg", data="bundled:shapes", method="saliency", out=str(out), limit=3,
                     shard_size=2, batch_size=2, threads=1, quiet=True, **kw)


def test_output_key_selects_a_dict_or_tuple_entry(tmp_path):
    from fastattr.data import load as load_data

    with pytest.raises(JobError, match="keys 'out', 'aux'.*--output-key out"):
        run_job(seg_job(tmp_path / "a"), model=DictSegmenter())
    assert not (tmp_path / "a").exists()
    with pytest.raises(JobError, match="no such key; its keys are 'out', 'aux'"):
        run_job(seg_job(tmp_path / "a", output_key="logits"), model=DictSegmenter())
    with pytest.raises(JobError, match="tuple of 2 entries, not a tensor; pass --output-key INDEX"):
        run_job(seg_job(tmp_path / "a"), model=DictSegmenter(as_tuple=True))
    run_job(seg_job(tmp_path / "d", output_key="out"), model=DictSegmenter())
    run_job(seg_job(tmp_path / "t", output_key=0), model=DictSegmenter(as_tuple=True))
    d, t = Results(tmp_path / "d"), Results(tmp_path / "t")
    assert d.manifest["task"] == "segmentation" and d.manifest["job"]["model"]["output_key"] == "out"
    # oracle: the plain body (what 'out' is), explained directly with the job's target (predicted foreground)
    from fastattr.jobs.targets import foreground_weights
    from fastattr.targets import region

    body = DictSegmenter().body
    data = load_data("shapes", split="test")
    x = torch.stack([torch.as_tensor(data[i][0]).float() for i in range(3)])
    expected = METHODS["saliency"](body, x, target=region(foreground_weights(body(x).detach())))
    torch.testing.assert_close(d.attributions(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t.attributions(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- torchvision segmentation


def no_download(monkeypatch):
    import torchvision.models._api as api

    calls = []

    def refuse(url, *a, **k):
        calls.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(api, "load_state_dict_from_url", refuse)
    return calls


def test_torchvision_segmentation_loads_offline_and_runs(tmp_path, monkeypatch):
    calls = no_download(monkeypatch)
    out = tmp_path / "o"
    res = run_job(JobConfig(model="torchvision:lraspp_mobilenet_v3_large?weights=none", data="bundled:shapes",
                            method="saliency", out=str(out), output_key="out", input_size=(64, 64), limit=2,
                            shard_size=2, batch_size=2, threads=1, quiet=True))
    assert calls == [] and res.images_computed == 2
    m = Results(out).manifest
    assert m["task"] == "segmentation" and m["images"][0]["target"]["kind"] == "predicted_foreground"
    assert Results(out)[m["images"][0]["id"]].attribution.shape == (3, 64, 64)
    # weights_backbone=none given explicitly (and weights=none): no download either
    from fastattr import models

    models.load("torchvision:fcn_resnet50?weights=none&weights_backbone=none&aux_loss=False")
    assert calls == []


def test_torchvision_loader_error_paths(monkeypatch):
    from fastattr import models

    calls = no_download(monkeypatch)
    # random model weights but pretrained backbone weights: the backbone's download fails (not weights.url of None)
    with pytest.raises(models.ModelLoadError) as e:
        models.load("torchvision:lraspp_mobilenet_v3_large?weights=none&weights_backbone=IMAGENET1K_V1")
    msg = str(e.value)
    assert calls and calls[-1] in msg and "weights_backbone=none" in msg and "no network" in msg
    with pytest.raises(models.ModelLoadError) as e:
        models.load("torchvision:resnet18")
    assert calls[-1] in str(e.value) and "resnet18?weights=none" in str(e.value)
    with pytest.raises(models.ModelLoadError, match="unknown weights_backbone 'nope'"):
        models.load("torchvision:fcn_resnet50?weights=none&weights_backbone=nope")
    with pytest.raises(models.ModelLoadError, match="has no weights_backbone option"):
        models.load("torchvision:resnet18?weights=none&weights_backbone=none")


# --------------------------------------------------------------------------- RGBA, crop boxes, heatmap names


def test_rgba_is_composited_onto_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255             # red everywhere
    arr[:2, :, 3] = 0             # top half fully transparent (its colour must not show)
    arr[2:, :2, 3] = 128          # half transparent
    arr[2:, 2:, 3] = 255          # opaque
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img, box, size = ImageFolderSource(tmp_path).load_image("a.png")
    a = 128 / 255
    expected = torch.empty(3, 4, 4)
    expected[:, :2] = 1.0
    expected[0, 2:] = 1.0
    expected[1:, 2:, :2] = 1 - a  # white * (1 - a) + red * a
    expected[1:, 2:, 2:] = 0.0
    torch.testing.assert_close(img, expected, atol=1 / 255, rtol=0)
    assert box == [0, 0, 4, 4] and size == [4, 4]


@pytest.mark.parametrize("resize, w, h, box", [("crop", 40, 20, [10, 0, 30, 20]), ("crop", 20, 50, [0, 15, 20, 35]),
                                               ("stretch", 40, 20, [0, 0, 40, 20])])
def test_crop_box_is_recorded(tmp_path, resize, w, h, box):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, :, 1] = np.arange(w, dtype=np.uint8)[None, :] * 5  # a horizontal ramp: shows which columns were kept
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(arr).save(data / "x.png")
    out = tmp_path / "o"
    frun(fjob(out, data, input_size=(10, 10), resize=resize))
    rec = Results(out)["x.png"].record
    assert rec["crop_box"] == box and rec["original_size"] == [w, h]
    # the box is the region that became the input: resizing it alone gives the same pixels
    src = ImageFolderSource(data, size=(10, 10), resize=resize)
    img, _, _ = src.load_image("x.png")
    with Image.open(data / "x.png") as im:
        ref = np.asarray(im.crop(tuple(box)).resize((10, 10), Image.BICUBIC), dtype=np.float32) / 255
    torch.testing.assert_close(img, torch.from_numpy(ref).permute(2, 0, 1), atol=2 / 255, rtol=0)


def test_heatmap_names_are_not_doubled(tmp_path):
    assert heatmap_relpath("a.png", 0) == "heatmaps/shard-00000/a.png"
    assert heatmap_relpath("sub/b.JPEG", 3) == "heatmaps/shard-00003/sub_b.png"
    taken = set()
    assert [heatmap_relpath(i, 0, taken) for i in ("b.png", "b.jpg", "c.png")] == [
        "heatmaps/shard-00000/b.png", "heatmaps/shard-00000/b-jpg.png", "heatmaps/shard-00000/c.png"]
    data = folder(tmp_path / "d", ["x.png", "x.jpg", "sub/y.png"])
    frun(fjob(tmp_path / "o", data, heatmaps=True))
    names = sorted(e["heatmap"] for e in Results(tmp_path / "o").images)
    assert names == ["heatmaps/shard-00000/sub_y.png", "heatmaps/shard-00000/x-png.png",
                     "heatmaps/shard-00000/x.png"]
    assert all((tmp_path / "o" / n).is_file() for n in names)


# --------------------------------------------------------------------------- progress


def test_plain_progress_lines_without_a_terminal_show_overall_progress(tmp_path, capsys):
    data = folder(tmp_path / "d", NAMES)
    out = tmp_path / "o"
    frun(fjob(out, data, limit=4, quiet=False, progress_interval=1e-9))
    capsys.readouterr()
    frun(fjob(out, data, quiet=False, progress_interval=1e-9))
    err = capsys.readouterr().err
    counts = [tuple(map(int, m)) for m in re.findall(r"saliency: (\d+)/(\d+) images", err)]
    assert counts, err
    assert all(total == 12 for _, total in counts)
    assert counts[0][0] == 6 and counts[-1][0] == 12  # starts at the 4 already done, plus the first batch
    assert "resuming: 4 images already done" in err
    assert "\r" not in err  # plain lines, not a bar
    # a long interval: no progress line at all for a short job
    frun(fjob(tmp_path / "o2", data, quiet=False, progress_interval=3600))
    assert "images (" not in capsys.readouterr().err


def test_progress_bar_starts_at_resumed_count(tmp_path, capsys):
    data = folder(tmp_path / "d", NAMES)
    out = tmp_path / "o"
    frun(fjob(out, data, limit=8))
    frun(fjob(out, data, quiet=False, progress=True))
    err = capsys.readouterr().err
    assert "8/12" in err and "12/12" in err and "0/4" not in err


# --------------------------------------------------------------------------- reading results back


def test_results_by_id(tmp_path):
    data = folder(tmp_path / "d", NAMES[:6])
    out = tmp_path / "o"
    frun(fjob(out, data, format="npy"))
    results = Results(out)
    assert len(results) == 6 and "img03.png" in results and "nope.png" not in results
    r = results["img03.png"]
    assert r.id == "img03.png" and r.record["id"] == "img03.png" and isinstance(r.attribution, torch.Tensor)
    # against the shard file itself, read whole with numpy
    whole = np.load(out / r.record["shard"])
    assert torch.equal(r.attribution, torch.from_numpy(whole[r.record["row"]]))
    torch.testing.assert_close(r.attribution, direct_saliency(data / "img03.png"), rtol=1e-5, atol=1e-6)
    assert r.record["target"] == int(tiny_classifier()(_pixels(data / "img03.png")[None]).argmax())
    with pytest.raises(KeyError, match="no image 'nope.png'"):
        results["nope.png"]
    assert [x.id for x in results] == NAMES[:6]
    torch.testing.assert_close(results.attributions(), torch.stack([x.attribution for x in results]))


def _pixels(path):
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1) / 255


# --------------------------------------------------------------------------- memory budget


def test_memory_budget_caps_automatic_rows():
    x = torch.zeros(4, 3, 16, 16)
    elements = 3 * 16 * 16
    free = engine.default_batch_size(x)
    for budget in (elements * 512 * 3, elements * 512 * 3 + 511, elements * 512 // 2):
        want = max(1, budget // (elements * 512))
        assert engine.default_batch_size(x, max_memory=budget) == min(free, want)
        with engine.memory_budget(budget):
            assert engine.default_batch_size(x) == min(free, want)
    assert engine.default_batch_size(x) == free
    with pytest.raises(ValueError, match="max_memory must be a positive number of bytes"):
        with engine.memory_budget(-1):
            pass


class RowCounter(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.max_rows = 0

    def forward(self, x):
        self.max_rows = max(self.max_rows, x.shape[0])
        return self.model(x)


def test_job_max_memory_bounds_rows_per_pass(tmp_path):
    data = folder(tmp_path / "d", NAMES[:4])
    elements = 3 * SIZE * SIZE
    opts = {"n_steps": 32}
    free, capped = RowCounter(tiny_classifier()), RowCounter(tiny_classifier())
    frun(fjob(tmp_path / "a", data, "integrated_gradients", method_options=opts), model=free)
    frun(fjob(tmp_path / "b", data, "integrated_gradients", method_options=opts, max_memory=elements * 512 * 5),
         model=capped)
    assert free.max_rows > 5 and 2 <= capped.max_rows <= 5  # the planner may round down to whole samples
    torch.testing.assert_close(Results(tmp_path / "b").attributions(), Results(tmp_path / "a").attributions(),
                               rtol=1e-5, atol=1e-6)
    assert Results(tmp_path / "b").manifest["job"]["max_memory"] == elements * 512 * 5


@pytest.mark.parametrize("value, expected", [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GB", 3 << 29),
                                             (1 << 21, 1 << 21)])
def test_max_memory_values(value, expected, tmp_path):
    from fastattr.jobs.spec import parse_memory

    assert parse_memory(value) == expected


def test_bad_max_memory_is_refused_before_out(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["run", "--model", "shapes-vgg", "--data", "bundled:shapes", "--method", "saliency",
                     "--out", str(out), "--max-memory", "lots"]) == 2
    assert "--max-memory must be a size such as 2G" in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------- crash safety

# ``fastattr run`` in a child process whose file writes pause ``FA_WRITE_PAUSE``
# seconds with half of the temporary file written, and again before the rename
# that commits it: a kill in those windows is a kill in the middle of a write.
CHILD = r"""
import builtins, os, sys, time
import fastattr.jobs.storage as storage

pause = float(os.environ["FA_WRITE_PAUSE"])


class HalfWritten:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        half = len(data) // 2
        self.f.write(data[:half])
        self.f.flush()
        time.sleep(pause)
        return half + self.f.write(data[half:])

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def slow_open(path, mode="r", *args, **kwargs):
    f = builtins.open(path, mode, *args, **kwargs)
    return HalfWritten(f) if "w" in mode and str(path).endswith(".tmp") else f


storage.open = slow_open


class SlowReplace:
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        time.sleep(pause)
        os.replace(src, dst)


storage.os = SlowReplace()
from fastattr import cli

sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_at_random_points_loses_nothing(tmp_path):
    """SIGKILL ``fastattr run`` at least 6 times in one job, at random moments and
    in the middle of shard writes; the rerun's output equals an uninterrupted
    run byte for byte."""
    import random
    import signal
    import subprocess
    import sys
    import time

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fa_crash_tiny.py").write_text(TINY_MODELS_SOURCE)
    env = dict(os.environ, FA_WRITE_PAUSE="0.15", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(mods)] + [p for p in [env.get("PYTHONPATH")] if p])
    n, shard = 64, 2

    def args(out):
        return ["run", "--model", "fa_crash_tiny:classifier", "--data", "bundled:shapes", "--method", "smooth_grad",
                "-O", "n_samples=4", "--stdevs", "0.2", "--seed", "11", "--out", str(out), "--limit", str(n),
                "--shard-size", str(shard), "--batch-size", "2", "--threads", "1", "--quiet"]

    ref, out = tmp_path / "ref", tmp_path / "crash"
    sys.path.insert(0, str(mods))
    try:
        assert cli.main(args(ref)) == 0
    finally:
        sys.path.remove(str(mods))

    rng = random.Random(13)
    kills, mid_write = 0, 0
    def committed():
        return len(list((out / "shards").glob("shard-*.json")))

    for attempt in range(20):
        if kills >= 6 and mid_write >= 3 and committed():
            break
        # what earlier killed runs left behind does not count for this one
        stale = set(out.rglob(".*.tmp")) if out.is_dir() else set()
        manifest_mtime = (out / "manifest.json").stat().st_mtime_ns if (out / "manifest.json").exists() else None
        proc = subprocess.Popen([sys.executable, "-c", CHILD] + args(out), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        during_write = attempt % 2 == 0
        # random kills: at a random moment of the computation (the start-up of Python and torch
        # takes seconds on a loaded machine; the clock starts when this run writes its manifest)
        deadline, started = time.monotonic() + 120, False
        tmp = []
        while proc.poll() is None and time.monotonic() < deadline:
            if during_write:
                tmp = [p for p in (out / "shards").glob(".shard-*.tmp") if p not in stale] \
                    if (out / "shards").is_dir() else []
                if tmp:
                    break
            elif not started:
                try:
                    started = (out / "manifest.json").stat().st_mtime_ns != manifest_mtime
                except FileNotFoundError:
                    started = False
                if started:
                    deadline = time.monotonic() + rng.uniform(0.0, 3.0)
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err.decode()[-2000:]}"
        kills += 1
        if during_write and tmp and any(p.exists() for p in tmp):
            mid_write += 1  # killed in the middle of a shard write (its temporary file is left behind)
        manifest = out / "manifest.json"
        if manifest.exists():
            assert json.loads(manifest.read_text())["status"] == "incomplete"
    assert kills >= 6 and mid_write >= 3, (kills, mid_write)
    print(f"SIGKILLs: {kills} ({mid_write} mid-write), {committed()} of {n // shard} shards committed before the rerun")
    assert 0 < committed() < n // shard, "the killed runs should have finished some shards, not all"

    sys.path.insert(0, str(mods))
    try:
        assert cli.main(args(out)) == 0
    finally:
        sys.path.remove(str(mods))
    assert data_files(out) == data_files(ref) and len(data_files(ref)) == n // shard
    a, b = Results(ref).manifest, Results(out).manifest
    assert a["images"] == b["images"] and a["shards"] == b["shards"] and b["num_images"] == n
    assert not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- segmentation targets


def tiny_seg3():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()


def seg_folder(root, n=3, w=16, h=12):
    rng = np.random.default_rng(7)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"s{i}.png")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[2 + i:8, 3:12 - i] = 2          # class 2
        mask[9:, :5] = 1                      # class 1
        Image.fromarray(mask, "L").save(root / f"s{i}.mask.png")
    return root


def seg_run(out, data, target, size=(8, 8), **kw):
    cfg = JobConfig(model="seg3", data=str(data), method="saliency", out=str(out), target=target, input_size=size,
                    shard_size=2, batch_size=2, threads=1, quiet=True, **kw)
    return run_job(cfg, model=tiny_seg3(), task="segmentation")


def loaded_images(data, size=(8, 8)):
    src = ImageFolderSource(data, size=size, mask_suffix=".mask.png")
    return {rel: src.load_image(rel)[0] for rel in src.files}


def test_segmentation_target_mask_files(tmp_path):
    from fastattr.targets import region

    data = seg_folder(tmp_path / "d")
    seg_run(tmp_path / "o", data, "mask")
    results = Results(tmp_path / "o")
    assert results.ids() == ["s0.png", "s1.png", "s2.png"]  # the masks are not taken as images
    model = tiny_seg3()
    for rel, x in loaded_images(data).items():
        # oracle: the mask cropped and resized (nearest) by PIL, one-hot over the 3 channels, background dropped
        with Image.open(data / rel.replace(".png", ".mask.png")) as m:
            box = results[rel].record["crop_box"]
            small = np.asarray(m.resize((8, 8), Image.NEAREST, box=tuple(box)), dtype=np.int64)
        w = torch.zeros(1, 3, 8, 8)
        for c in (1, 2):
            w[0, c] = torch.from_numpy(small == c).float()
        expected = METHODS["saliency"](model, x[None], target=region(w))[0]
        torch.testing.assert_close(results[rel].attribution, expected, rtol=1e-5, atol=1e-6)
        assert results[rel].record["target"] == {"kind": "mask_pixels", "pixels": int((small > 0).sum())}
    # a changed mask is a changed image: recomputed
    with Image.open(data / "s1.mask.png") as m:
        arr = np.asarray(m).copy()
    arr[:] = 0
    arr[0:3, 0:3] = 1
    Image.fromarray(arr, "L").save(data / "s1.mask.png")
    res = seg_run(tmp_path / "o", data, "mask")
    assert res.images_computed == 1 and Results(tmp_path / "o")["s1.png"].record["target"]["pixels"] > 0
    # a missing mask names the file
    os.unlink(data / "s2.mask.png")
    with pytest.raises(JobError, match=re.escape(str(data / "s2.mask.png"))):
        seg_run(tmp_path / "o2", data, "mask")


def test_segmentation_target_class_and_box(tmp_path):
    from fastattr.targets import region

    data = seg_folder(tmp_path / "d")
    seg_run(tmp_path / "c", data, "2")
    seg_run(tmp_path / "b", data, "box:1,2,5,7")
    model = tiny_seg3()
    for rel, x in loaded_images(data).items():
        with torch.no_grad():
            pred = model(x[None]).argmax(1)[0]
        w = torch.zeros(1, 3, 8, 8)
        w[0, 2] = (pred == 2).float()
        expected = METHODS["saliency"](model, x[None], target=region(w))[0]
        r = Results(tmp_path / "c")[rel]
        torch.testing.assert_close(r.attribution, expected, rtol=1e-5, atol=1e-6)
        assert r.record["target"] == {"kind": "class_pixels", "class": 2, "pixels": int((pred == 2).sum())}
        wb = torch.zeros(1, 3, 8, 8)
        for c in (1, 2):
            wb[0, c, 1:5, 2:7] = (pred[1:5, 2:7] == c).float()
        expected = METHODS["saliency"](model, x[None], target=region(wb))[0]
        r = Results(tmp_path / "b")[rel]
        torch.testing.assert_close(r.attribution, expected, rtol=1e-5, atol=1e-6)
        assert r.record["target"]["box"] == [1, 2, 5, 7]
    with pytest.raises(JobError, match="box reaches beyond the model's output of 8x8"):
        seg_run(tmp_path / "x", data, "box:0,0,9,4")
    with pytest.raises(JobError, match="box must be box:TOP,LEFT,BOTTOM,RIGHT"):
        seg_run(tmp_path / "x", data, "box:3,3,1,1")
    with pytest.raises(JobError, match="class 3 is out of range: the model has 3 output channels"):
        seg_run(tmp_path / "x", data, "3")
    with pytest.raises(JobError, match="--target mask is for segmentation models"):
        frun(fjob(tmp_path / "x", data, target="mask"))
    assert not (tmp_path / "x").exists()


def test_unchanged_files_are_not_hashed_again(tmp_path, monkeypatch):
    import builtins

    from fastattr.jobs import sources

    data = folder(tmp_path / "d", NAMES[:6])
    out = tmp_path / "o"
    frun(fjob(out, data))
    opened = []

    def counting_open(path, *a, **k):
        opened.append(Path(path).name)
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(sources, "open", counting_open, raising=False)
    assert frun(fjob(out, data)).shards_computed == 0
    assert opened == []  # size and mtime unchanged: the recorded sha256 is used
    # new mtime, same bytes: hashed again, and still the same image
    os.utime(data / "img02.png", ns=(1, 1))
    assert frun(fjob(out, data)).shards_computed == 0 and opened == ["img02.png"]
    # other bytes of the same size under the old mtime: only --verify notices
    st = (data / "img03.png").stat()
    write_png(data / "img03.png", 777)
    assert (data / "img03.png").stat().st_size == st.st_size
    os.utime(data / "img03.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert frun(fjob(out, data)).shards_computed == 0
    res = frun(fjob(out, data, verify=True))
    assert res.images_computed == 1
    torch.testing.assert_close(Results(out)["img03.png"].attribution, direct_saliency(data / "img03.png"))


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_a_shard_of_only_unreadable_images(tmp_path, fmt):
    data = folder(tmp_path / "d", ["a.png"])
    make_bad_files(data)
    out = tmp_path / "o"
    res = frun(fjob(out, data, on_error="skip", shard_size=2, format=fmt))
    assert (res.images_computed, res.images_skipped, res.shards_computed) == (1, 3, 2)
    results = Results(out)
    assert results.ids() == ["a.png"] and len(results.skipped) == 3
    assert [s["shard"] for s in results.skipped] == [f"shards/shard-00000.{fmt}"] + [f"shards/shard-00001.{fmt}"] * 2
    torch.testing.assert_close(results.attributions(), direct_saliency(data / "a.png")[None])
    assert frun(fjob(out, data, on_error="skip", shard_size=2, format=fmt)).shards_computed == 0


def test_mask_files_are_never_images(tmp_path):
    """NAME.mask.png files beside the images are not attributed whatever --target is."""
    data = seg_folder(tmp_path / "d")
    seg_run(tmp_path / "o", data, "auto")
    assert Results(tmp_path / "o").ids() == ["s0.png", "s1.png", "s2.png"]


def test_empty_target_region_is_warned(tmp_path, capsys):
    """A class no pixel is predicted as gives an all-zero map: said on stderr, recorded as pixels 0."""
    data = seg_folder(tmp_path / "d")
    model = tiny_seg3()
    with torch.no_grad():  # a class that wins no pixel of any image: bias it far down
        model[2].bias[1] = -1e4
    cfg = JobConfig(model="seg3", data=str(data), method="saliency", out=str(tmp_path / "o"), target="1",
                    input_size=(8, 8), shard_size=2, batch_size=2, threads=1, quiet=False)
    run_job(cfg, model=model, task="segmentation")
    err = capsys.readouterr().err
    assert "has no pixel in 2 image(s), e.g. s0.png" in err and "all zero" in err
    r = Results(tmp_path / "o")
    assert all(r[i].record["target"]["pixels"] == 0 and not r[i].attribution.any() for i in r.ids())


def test_jobs_reachable_from_the_package():
    """README: fastattr.jobs.Results(OUT) after a plain `import fastattr`."""
    import subprocess
    import sys

    code = "import fastattr; print(fastattr.jobs.Results.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Results"


def test_log_lines_count_one_image_in_the_singular(tmp_path, capsys):
    data = folder(tmp_path / "d", ["a.png"])
    frun(fjob(tmp_path / "o", data, quiet=False))
    err = capsys.readouterr().err
    assert "1 image computed" in err and "1 images" not in err, err
