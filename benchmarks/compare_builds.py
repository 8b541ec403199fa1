"""Two builds of fastattr side by side: is a change slower end to end?

    python benchmarks/compare_builds.py OLD_PYTHON_DIR NEW_PYTHON_DIR \
        [--cases resnet18-224 small-cnn-64] [--methods integrated_gradients gnl_integrated_gradients] \
        [--variant channels_last] [--rounds 7] [--threads 2] [--out table.md]

Each ``*_PYTHON_DIR`` is a checkout's ``python/`` folder holding a built
``fastattr`` (e.g. a ``git worktree`` of the old commit built with
``python setup.py build_ext --inplace``). One long-lived worker process per
build loads the cases of ``e2e.py`` once; every round then runs each
(case, method) once in each worker, in a shuffled order, after a warm-up
call, and records seconds per call. Reported: medians over rounds and the
median of the per-round ratios new / old (each round's pair shares the
machine's state, which drifts on a shared VM).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

WORKER = r"""
import json, sys, time, torch
sys.path.insert(0, {bench!r})
import e2e, fastattr
assert fastattr.__file__.startswith({root!r}), fastattr.__file__
torch.set_num_threads({threads})
runners = {{}}
for line in sys.stdin:
    case, method, impl = json.loads(line)
    key = (case, method, impl)
    if key not in runners:
        runners[key] = e2e.make_runner(e2e.CASES[case], method, impl, "cpu")
        runners[key]()  # warm-up
    t0 = time.perf_counter()
    runners[key]()
    print(json.dumps(time.perf_counter() - t0), flush=True)
"""


class Worker:
    def __init__(self, python_dir: Path, threads: int):
        env = dict(os.environ, PYTHONPATH=str(python_dir))
        code = WORKER.format(bench=str(HERE), root=str(python_dir), threads=threads)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def time(self, case: str, method: str, impl: str) -> float:
        self.proc.stdin.write(json.dumps([case, method, impl]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--cases", nargs="+", default=["resnet18-224", "small-cnn-64"])
    p.add_argument("--methods", nargs="+", default=["integrated_gradients", "gnl_integrated_gradients"])
    p.add_argument("--variant", default="", help="an e2e.py variant of the fastattr run, e.g. channels_last")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    workers = {"old": Worker(args.old.resolve(), args.threads), "new": Worker(args.new.resolve(), args.threads)}
    impl = "fastattr" + (f"+{args.variant}" if args.variant else "")
    jobs = [(c, m) for c in args.cases for m in args.methods]
    times = {(c, m, b): [] for c, m in jobs for b in workers}
    rng = random.Random(0)
    try:
        for r in range(args.rounds):
            order = [(c, m, b) for c, m in jobs for b in workers]
            rng.shuffle(order)
            for c, m, b in order:
                times[(c, m, b)].append(workers[b].time(c, m, impl))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for w in workers.values():
            w.close()
    lines = [f"| case | method ({impl}) | old (s) | new (s) | new / old (median of per-round ratios) |",
             "|---|---|---:|---:|---:|"]
    for c, m in jobs:
        old, new = times[(c, m, "old")], times[(c, m, "new")]
        ratio = statistics.median(n / o for n, o in zip(new, old))
        lines.append(f"| {c} | {m} | {statistics.median(old):.3f} | {statistics.median(new):.3f} | {ratio:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
