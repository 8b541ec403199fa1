"""Batch attribution jobs: streaming images through a method into resumable shards.

This is the machinery behind ``fastattr run`` / ``demo`` / ``bench``, usable on
its own::

    from fastattr.jobs import JobConfig, run_job, open_output

    cfg = JobConfig(model="shapes-vgg", data="bundled:shapes", method="saliency",
                    out="out/sal", limit=1000, shard_size=256)
    result = run_job(cfg)                 # resumes if out/sal holds the same job
    out = open_output("out/sal")
    attributions = out.attributions()     # (N, 3, H, W), in image order

See :mod:`fastattr.jobs.storage` for the output layout and its crash safety,
:mod:`fastattr.jobs.runner` for sharding and determinism, and
:mod:`fastattr.jobs.distributed` for torchrun. The library (``import fastattr``)
does not import this package.
"""

from .reader import JobOutput, open_output
from .runner import JobResult, run_job
from .spec import JobConfig, JobError
from .storage import load_shard

__all__ = ["JobConfig", "JobError", "JobResult", "JobOutput", "run_job", "open_output", "load_shard"]
