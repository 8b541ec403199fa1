"""Batch attribution jobs: streaming images through a method into resumable shards.

This is the machinery behind ``fastattr run`` / ``demo`` / ``bench``, usable on
its own::

    from fastattr.jobs import JobConfig, Results, run_job

    cfg = JobConfig(model="shapes-vgg", data="bundled:shapes", method="saliency",
                    out="out/sal", limit=1000, shard_size=256)
    result = run_job(cfg)                 # resumes if out/sal holds the same job
    results = Results("out/sal")
    r = results["shapes/test/000007"]     # by image id: r.attribution (tensor), r.record (manifest entry)
    attributions = results.attributions() # (N, 3, H, W), in image order

See :mod:`fastattr.jobs.storage` for the output layout and its crash safety,
:mod:`fastattr.jobs.runner` for sharding and determinism, and
:mod:`fastattr.jobs.distributed` for torchrun. The library (``import fastattr``)
does not import this package.
"""

from .reader import JobOutput, Result, Results, open_output
from .runner import JobResult, run_job
from .spec import JobConfig, JobError
from .storage import load_shard

__all__ = ["JobConfig", "JobError", "JobResult", "JobOutput", "Result", "Results", "run_job", "open_output",
           "load_shard"]
