"""``torchrun --nproc-per-node=2 -m fastattr run``: same output as one process, and resumable."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastattr.jobs import JobConfig, open_output, run_job
from fastattr.methods import METHODS
from utils import TINY_MODELS_SOURCE

TINY = "fa_dist_tiny_models:classifier"
LIMIT, SHARD, BATCH = 14, 4, 2  # 4 shards: rank 0 gets 0 and 2, rank 1 gets 1 and 3
OPTIONS = {"n_samples": 3, "stdevs": 0.2}


def config(out, **kw):
    return JobConfig(model=TINY, data="bundled:shapes", method="smooth_grad", out=str(out), method_options=OPTIONS,
                     limit=LIMIT, shard_size=SHARD, batch_size=BATCH, seed=5, quiet=True, threads=1, **kw)


def test_torchrun_two_processes_equals_one(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fa_dist_tiny_models.py").write_text(TINY_MODELS_SOURCE)
    monkeypatch.syspath_prepend(str(mods))

    ref, dist_out = tmp_path / "ref", tmp_path / "dist"
    run_job(config(ref))

    # Start the distributed run from an interrupted single-process run (shard 0 done,
    # shard 1 half done), so it also has to resume.
    calls = {"n": 0}
    smooth_grad = METHODS["smooth_grad"]

    def dying(model, inputs, target=None, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return smooth_grad(model, inputs, target=target, **kw)

    dying.__signature__ = inspect.signature(smooth_grad)
    with pytest.raises(KeyboardInterrupt):
        run_job(config(dist_out), methods=dict(METHODS, smooth_grad=dying))
    assert sorted(p.name for p in (dist_out / "shards").glob("*.json")) == ["shard-00000.json"]

    # CPU kernels may round differently with other thread counts: one thread everywhere
    # (--threads / threads=1), as torchrun's default OMP_NUM_THREADS=1.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(mods)] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fastattr",
           "run", "--model", TINY, "--data", "bundled:shapes", "--method", "smooth_grad", "--out", str(dist_out),
           "--n-samples", "3", "--stdevs", "0.2", "--limit", str(LIMIT), "--shard-size", str(SHARD),
           "--batch-size", str(BATCH), "--seed", "5", "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "10 images computed" in proc.stderr, proc.stderr[-2000:]  # shards 1-3 (4 + 4 + 2), over both ranks

    a, b = open_output(ref), open_output(dist_out)
    assert b.manifest["world_size"] == 2
    assert a.manifest["shards"] == b.manifest["shards"] and a.manifest["images"] == b.manifest["images"]
    ranks = {json.loads((dist_out / "shards" / f"shard-{k:05d}.json").read_text())["rank"] for k in (1, 2, 3)}
    assert ranks == {0, 1}
    for k in range(4):
        name = f"shard-{k:05d}.safetensors"
        assert (ref / "shards" / name).read_bytes() == (dist_out / "shards" / name).read_bytes()
    assert [e["index"] for e in b.images] == list(range(LIMIT))

    # And back to one process: a lost shard of the distributed run is redone alike.
    for suffix in ("json", "safetensors"):
        Path(dist_out, "shards", f"shard-00003.{suffix}").unlink()
    res = run_job(config(dist_out))
    assert (res.shards_computed, res.shards_skipped) == (1, 3)
    assert (ref / "shards" / "shard-00003.safetensors").read_bytes() == \
        (dist_out / "shards" / "shard-00003.safetensors").read_bytes()
