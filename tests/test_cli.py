"""The ``fastattr`` command line: run (errors, config, heatmaps, kill -9 and resume), demo, bench."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from fastattr import cli
from fastattr.jobs import open_output
from utils import TINY_MODELS_SOURCE

TINY = "fa_cli_tiny_models:classifier"


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """Makes ``TINY`` importable here and in subprocesses; returns the environment for the latter."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fa_cli_tiny_models.py").write_text(TINY_MODELS_SOURCE)
    monkeypatch.syspath_prepend(str(mods))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(mods)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_args(out, *extra, method="saliency", limit=6):
    return ["run", "--model", TINY, "--data", "bundled:shapes", "--method", method, "--out", str(out),
            "--limit", str(limit), "--shard-size", "4", "--batch-size", "2", "--threads", "1", "--quiet", *extra]


def test_unknown_method_lists_choices(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--model", "m", "--data", "d", "--method", "nope", "--out", "o"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "integrated_gradients" in err and "saliency" in err


def test_missing_arguments_and_malformed_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--data", "d", "--method", "saliency", "--out", "o"])
    assert "required: --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--model", "m", "--data", "d", "--method", "saliency", "--out", "o", "-O", "abs"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "--model", "m", "--data", "d", "--method", "saliency", "--out", "o", "--shard-size", "0"])
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])
    assert "invalid choice" in capsys.readouterr().err


def test_job_errors_are_one_clear_line(tmp_path, tiny_model, capsys):
    rc = cli.main(["run", "--model", TINY, "--data", str(tmp_path / "nowhere"), "--method", "saliency",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nowhere" in err and "does not exist" in err and "Traceback" not in err
    assert cli.main(run_args(tmp_path / "a", "-O", "foo=1")) == 2
    err = capsys.readouterr().err
    assert "method 'saliency' has no option 'foo'" in err and "abs" in err
    assert cli.main(run_args(tmp_path / "b", "--n-steps", "3")) == 2  # saliency has no steps
    assert "has no option 'n_steps'" in capsys.readouterr().err
    assert cli.main(run_args(tmp_path / "c", "--n-steps", "0", method="integrated_gradients")) == 2
    assert "n_steps" in capsys.readouterr().err
    assert cli.main(["run", "--model", "no-such-model", "--data", "bundled:shapes", "--method", "saliency",
                     "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "cannot load model 'no-such-model'" in err and "shapes-vgg" in err
    assert cli.main(run_args(tmp_path / "e", "--target", "hexagon")) == 2
    assert "class name" in capsys.readouterr().err


def test_config_file_and_flag_override(tmp_path, tiny_model):
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"model": TINY, "data": "bundled:shapes", "method": "integrated_gradients",
                               "n-steps": 3, "limit": 5, "shard_size": 2, "quiet": True,
                               "method_options": {"method": "riemann_middle"}}))
    assert cli.main(["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--n-steps", "2"]) == 0
    m = open_output(tmp_path / "o").manifest
    assert m["job"]["method_options"]["n_steps"] == 2 and m["job"]["method_options"]["method"] == "riemann_middle"
    assert m["num_images"] == 5 and m["num_shards"] == 3
    cfg.write_text(json.dumps({"modle": TINY}))
    with pytest.raises(SystemExit):
        cli.main(["run", "--config", str(cfg), "--out", str(tmp_path / "p")])


def test_heatmaps_and_npy(tmp_path, tiny_model):
    out = tmp_path / "h"
    assert cli.main(run_args(out, "--heatmaps", "--format", "npy", method="guided_backprop", limit=5)) == 0
    entries = open_output(out).images
    assert len(entries) == 5 and sorted(p.name for p in (out / "shards").glob("*.npy")) == [
        "shard-00000.npy", "shard-00001.npy"]
    for e in entries:
        with Image.open(out / e["heatmap"]) as im:
            im.verify()
        with Image.open(out / e["heatmap"]) as im:
            assert im.format == "PNG" and im.size == (64, 64)


def test_refuses_to_resume_with_other_parameters(tmp_path, tiny_model, capsys):
    out = tmp_path / "o"
    assert cli.main(run_args(out, "--n-steps", "2", method="integrated_gradients")) == 0
    assert cli.main(run_args(out, "--n-steps", "3", method="integrated_gradients")) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "n_steps: 2 (existing) vs 3 (now)" in err and "--overwrite" in err
    assert cli.main(run_args(out, "--n-steps", "3", "--overwrite", method="integrated_gradients")) == 0
    assert open_output(out).manifest["job"]["method_options"]["n_steps"] == 3


def test_resume_after_kill_9_is_identical(tmp_path, tiny_model):
    """kill -9 after the first shard is committed; the rerun completes the job with the same bytes."""
    args = ["--method-option", "n_samples=6", "--stdevs", "0.2", "--seed", "3"]
    limit, shards = 24, 6
    ref, broken = tmp_path / "ref", tmp_path / "broken"
    assert cli.main(run_args(ref, *args, method="smooth_grad", limit=limit)) == 0

    cmd = [sys.executable, "-m", "fastattr"] + run_args(broken, *args, method="smooth_grad", limit=limit)
    proc = subprocess.Popen(cmd, env=tiny_model, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = broken / "shards" / "shard-00000.json"
    deadline = time.monotonic() + 90
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err.decode()[-2000:]}"
    records = sorted((broken / "shards").glob("shard-*.json"))
    assert 1 <= len(records) < shards, "kill -9 should have stopped the run part way"
    assert json.loads((broken / "manifest.json").read_text())["status"] == "incomplete"

    assert cli.main(run_args(broken, *args, method="smooth_grad", limit=limit)) == 0
    a, b = open_output(ref), open_output(broken)
    assert a.manifest["shards"] == b.manifest["shards"]  # names, rows, sizes, sha256
    for k in range(shards):
        assert torch.equal(a.shard(k)["attributions"], b.shard(k)["attributions"])
        name = f"shard-{k:05d}.safetensors"
        assert (ref / "shards" / name).read_bytes() == (broken / "shards" / name).read_bytes()
    indices = [e["index"] for e in b.images]
    assert indices == list(range(limit))  # every image exactly once, in order
    assert [e["id"] for e in b.images] == [e["id"] for e in a.images]
    assert not list(broken.rglob("*.tmp"))


def test_bench_baselines_agree(tiny_model, capsys):
    from fastattr.jobs.bench import run_bench

    rows = run_bench(model=TINY, methods=["saliency", "guided_backprop", "gnl_integrated_gradients", "smooth_grad"],
                     batch=2, n_steps=3, repeats=1, input_size=(16, 16), threads=1)
    out = capsys.readouterr().out
    assert "guided_backprop" in out and "speedup" in out
    for r in rows:
        assert r["max_rel_diff"] < 1e-5, r
    assert "captum_s" in rows[0]
    # the baselines' guided rules are really active (they are not plain gradients)
    from fastattr.jobs.bench import BASELINES, _grad
    import fa_cli_tiny_models

    net = fa_cli_tiny_models.classifier().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2])
    plain = _grad(net, x, t)
    assert not torch.equal(BASELINES["guided_backprop"](net, x, t), plain)
    assert not torch.equal(BASELINES["gnl_integrated_gradients"](net, x, t, n_steps=2),
                           BASELINES["integrated_gradients"](net, x, t, n_steps=2))


def _bundled_weights_present():
    try:
        from fastattr import models

        return all(models.weights_path(n).is_file() for n in ("shapes-vgg", "lesions-unet"))
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _bundled_weights_present(), reason="the bundled model weights are not built yet")
def test_demo_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--images", "2", "--lesion-images", "1", "--n-steps", "2",
                     "--n-samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "deletion AUC" in printed
    summary = json.loads((out / "summary.json").read_text())
    methods = {r["method"] for r in summary["rows"]}
    assert {"integrated_gradients", "gnl_integrated_gradients", "guided_backprop", "saliency", "smooth_grad", "rise",
            "occlusion", "causal_ate"} <= methods
    # PdCR's causal_ate explains the segmentation set only, against its masks.
    assert {r["data"] for r in summary["rows"] if r["method"] == "causal_ate"} == {"lesions"}
    assert (out / "lesions-causal_ate.png").exists()
    for r in summary["rows"]:  # the metrics of every method (probabilities: AUCs in [0, 1] for classes)
        assert r["deletion_auc"] is not None and r["insertion_auc"] is not None, r
        if r["data"] == "shapes":
            assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1 and 0 <= r["pointing_rate"] <= 1
    assert "insertion AUC" in printed
    for g in summary["grids"]:
        with Image.open(g) as im:
            im.verify()
    assert (out / "shapes-overview.png").exists() and (out / "lesions-integrated_gradients.png").exists()
    assert (out / "summary.md").exists()


@pytest.mark.parametrize("bad", [["--n-steps", "-3"], ["--integration", "simpson"], ["-O", "n_steps=2.5"],
                                 ["-O", "baselines=[1, 2]"], ["-O", "nonsense=1"]])
def test_refused_options_leave_no_output(tmp_path, tiny_model, capsys, bad):
    """Every method option is checked before anything is written to --out, so the
    corrected command then runs in the same folder."""
    out = tmp_path / "new" / "o"
    assert cli.main(run_args(out, *bad, method="integrated_gradients", limit=2)) == 2
    err = capsys.readouterr().err
    assert "method 'integrated_gradients'" in err and "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
    assert cli.main(run_args(out, "--n-steps", "2", method="integrated_gradients", limit=2)) == 0
    assert open_output(out).manifest["status"] == "complete"


def test_refused_option_values_name_the_value(tmp_path, tiny_model, capsys):
    assert cli.main(run_args(tmp_path / "a", "--n-steps", "-3", method="integrated_gradients")) == 2
    assert "n_steps must be at least 1, got -3" in capsys.readouterr().err
    assert cli.main(run_args(tmp_path / "b", "--integration", "simpson", method="integrated_gradients")) == 2
    assert "got 'simpson'" in capsys.readouterr().err
    assert cli.main(run_args(tmp_path / "c", "-O", "p=2", "-O", "n_masks=4", method="rise")) == 2
    assert "p must be in (0, 1], got 2" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_out_that_is_a_file(tmp_path, tiny_model, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert cli.main(run_args(f)) == 2
    err = capsys.readouterr().err
    assert f"--out {f} exists and is not a directory" in err
    assert f.read_text() == "x"
    assert cli.main(run_args(f / "sub")) == 2
    assert f"{f} is not a directory" in capsys.readouterr().err
