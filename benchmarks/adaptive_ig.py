"""Adaptive integrated gradients against Captum's fixed rules: accuracy versus model evaluations (issue 14).

    python benchmarks/adaptive_ig.py [--images 24] [--gnl-images 8] [--resnet18-images 0] [--threads 1]
                                     [--oracle-images 0]
                                     [--models shapes-vgg,shapes-resnet]
                                     [--cache /tmp/fastattr-adaptive-ig]

Per model and image (the first ``--images`` test images of the bundled shapes
data set; target: the model's top class; baseline: zeros):

- **reference**: IG with the midpoint rule at n = 2048, checked against n = 1024
  (resnet18: 1024 against 512); the check is the relative L2 distance between
  the two, which must be at most a tenth of the errors compared
  (``--check-images N``: the check on the first N images only);
- **errors**: relative convergence delta ``|sum A - (F(x) - F(x'))| / |F(x) -
  F(x')|`` (F at x and x' from plain forward passes), relative L2 distance to
  the reference, overlap of the top 5% pixels (pixel score: |attribution summed
  over channels|) with the reference's;
- **cost**: forward+backward rows and forward-only rows counted by a wrapper
  around the model, equivalent evaluations per image = fb + c * f with c the
  measured forward / forward+backward time ratio at the benchmark's batch size,
  and wall time per call (all images in one call, the same batch_size);
- **sweep**: ``gausslegendre``, ``riemann_middle``, ``riemann_trapezoid`` at 4..128
  nodes and Gauss-Legendre at 50 (Captum's default); ``adaptive`` with
  ``tolerance=0`` at budgets 9..128 (``select="residual"``) and 17..64
  (``select="jump"``), and with tolerances at a budget of 64;
- **per-model schedule** (an alternative of the issue): node density fitted once per model on 8
  other test images (adaptive select="jump" at 64 nodes), used as a fixed midpoint rule at 16..32;
- **forward-only pilot** (the issue's other alternative): F at P uniform nodes by
  forward passes only, node density ~ (|second difference of F|)^(1/3), a midpoint
  rule of n equal-mass cells per image; P forward rows count c each;
- **equal accuracy**: per family, the fewest equivalent evaluations whose median and
  p90 errors are both at most GL-50's, on the delta and on L2;
- **hindsight oracle** (``--oracle-images N``): from N images' gradients at 2048
  midpoint nodes, the best midpoint rule of n cells (edges on a 1/128 grid) found by
  dynamic programming knowing the whole path: what no placement of n nodes beats;
- **paired comparison**: per image, adaptive at <= 17 evaluations against
  Gauss-Legendre n = 50 (fraction of images where adaptive's error is at most
  GL-50's, and a sign test p-value).

``--resnet18-images N``: torchvision resnet18, random init (seed 0), on the
first N shapes images bilinearly up-sampled to 224x224, reference n = 1024
checked against 512, a reduced sweep (16, 32, GL-50; adaptive 17-33), 16 rows
per pass.

GNL-IG (no completeness): L2 and top-5% only, on ``--gnl-images`` images, its
reference midpoint n = 1024 checked against n = 512.

Results are cached per (model, method, setting) under ``--cache`` so a run can
be resumed; delete the folder to recompute. Prints markdown tables. To use two
cores for one model: ``--no-adaptive`` (references and fixed rules) into one
cache and ``--adaptive-only`` into another, at the same time, then the full
command with ``--merge OTHER`` reads both.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import time

import torch

import fastattr
from fastattr import data, engine, models
from fastattr.methods.integrated_gradients import AdaptiveResult, adaptive_integrated_gradients
from fastattr.targets import resolve

# The module (fastattr.methods re-exports the function under the same name).
ig_module = importlib.import_module("fastattr.methods.integrated_gradients")

FIXED_RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid")
BUDGETS = (4, 8, 16, 32, 64, 128)
ADAPTIVE_BUDGETS = (9, 13, 17, 25, 33, 49, 64, 128)
ADAPTIVE_TOLS = (0.03, 0.01, 0.003)
JUMP_BUDGETS = (17, 25, 33, 49, 64)
SCHEDULE_BUDGETS = (16, 24, 32)
FIT_IMAGES = 8
# Forward-only pilot (an alternative of the issue): (pilot forward passes, gradient nodes)
# per image, about 17, 17 and 33 equivalent evaluations at c ~ 0.42.
PILOTS = ((9, 13), (17, 10), (17, 26))
# Hindsight oracle: cells on a grid of 1/ORACLE_GRID, from ORACLE_FINE midpoint-node gradients.
ORACLE_FINE, ORACLE_GRID = 2048, 128
ORACLE_BUDGETS = (8, 12, 16, 17, 24, 32, 48, 64)


class Counting(torch.nn.Module):
    """Counts rows run with autograd on (forward+backward) and without (forward only)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fb = self.f = 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.fb += x.shape[0]
        else:
            self.f += x.shape[0]
        return self.model(x)


def measure_c(model, x, rows: int, rounds: int = 3) -> float:
    """Forward-only time / forward+backward time per row, at ``rows`` rows per pass."""
    batch = x[:1].expand(rows, *x.shape[1:]).contiguous()
    tf, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        with torch.no_grad():
            model(batch)
        tf.append(time.perf_counter() - t)
        z = batch.clone().requires_grad_(True)
        t = time.perf_counter()
        (g,) = torch.autograd.grad(model(z)[:, 0].sum(), z)
        tb.append(time.perf_counter() - t)
    return statistics.median(tf) / statistics.median(tb)


def top_overlap(a: torch.Tensor, b: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    pa, pb = a.sum(1).abs().flatten(1), b.sum(1).abs().flatten(1)
    k = max(1, int(round(frac * pa.shape[1])))
    ia, ib = pa.topk(k, 1).indices, pb.topk(k, 1).indices
    out = []
    for r in range(a.shape[0]):
        out.append(len(set(ia[r].tolist()) & set(ib[r].tolist())) / k)
    return torch.tensor(out, dtype=torch.float64)


def rel_l2(a, ref):
    return ((a - ref).double().flatten(1).norm(dim=1) / ref.double().flatten(1).norm(dim=1))


def rel_delta(a, gap):
    return ((a.double().flatten(1).sum(1) - gap).abs() / gap.abs())


def q(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    i = p * (len(v) - 1)
    lo, hi = math.floor(i), math.ceil(i)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign-test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * p)


class Bench:
    def __init__(self, name, model, x, cache, batch_size, gnl_n, ref_n):
        self.name, self.model, self.x = name, Counting(model), x
        self.cache_path = os.path.join(cache, f"{name}-{x.shape[0]}.pt")
        self.cache = torch.load(self.cache_path) if os.path.exists(self.cache_path) else {}
        self.bs = batch_size
        self.gnl_n = gnl_n
        self.ref_n = ref_n
        with torch.no_grad():
            self.target = model(x).argmax(1)
        xb = torch.zeros_like(x)
        res = resolve(model, x, self.target, batch_size)
        self.gap = (engine.forward_scores(model, x, res, batch_size)
                    - engine.forward_scores(model, xb, res, batch_size)).double()

    def save(self):
        torch.save(self.cache, self.cache_path)

    def run(self, key, fn, gnl=False, first=None, **kw):
        """Attributions (cached) plus cost: (attr, fb rows, f rows, wall s, info);
        ``first``: on the first ``first`` images only."""
        if key in self.cache:
            return self.cache[key]
        n = self.gnl_n if gnl else first
        x = self.x[:n] if n else self.x
        t = self.target[:n] if n else self.target
        self.model.fb = self.model.f = 0
        t0 = time.perf_counter()
        out = fn(self.model, x, t, batch_size=self.bs, **kw)
        wall = time.perf_counter() - t0
        info = None
        if isinstance(out, AdaptiveResult):
            info = {"evals": out.evals, "converged": out.converged}
            out = out.attributions
        entry = {"attr": out.detach(), "fb": self.model.fb, "f": self.model.f, "wall": wall, "info": info}
        self.cache[key] = entry
        self.save()
        print(f"  [{self.name}] {key}: {wall:.1f} s, fb {self.model.fb}, f {self.model.f}", flush=True)
        return entry


def fixed(method, n):
    def fn(model, x, t, batch_size):
        return fastattr.integrated_gradients(model, x, t, n_steps=n, method=method, batch_size=batch_size)
    return fn


def fixed_gnl(method, n):
    def fn(model, x, t, batch_size):
        return fastattr.gnl_integrated_gradients(model, x, t, n_steps=n, method=method, batch_size=batch_size)
    return fn


def adaptive(max_evals, tolerance, gnl=False, select="residual"):
    def fn(model, x, t, batch_size):
        return adaptive_integrated_gradients(model, x, t, max_evals=max_evals, tolerance=tolerance,
                                             batch_size=batch_size, gnl=gnl, select=select)
    return fn


def fit_schedule(b: "Bench", x_fit, fit_evals: int = 64, bins: int = 16):
    """A per-model schedule: the density of the nodes that adaptive IG (select="jump",
    tolerance 0, ``fit_evals`` nodes) places on ``x_fit`` (images not evaluated),
    as a histogram of ``bins`` equal cells of [0, 1] (+1 per bin). Returns
    (density, fit cost in forward+backward rows)."""
    if ("fit", fit_evals) not in b.cache:
        with torch.no_grad():
            t_fit = b.model.model(x_fit).argmax(1)
        r = adaptive_integrated_gradients(b.model.model, x_fit, t_fit, tolerance=0.0, max_evals=fit_evals,
                                          batch_size=b.bs, select="jump")
        b.cache[("fit", fit_evals)] = torch.cat(r.alphas).double()
        b.save()
    nodes = b.cache[("fit", fit_evals)]
    return torch.histc(nodes, bins=bins, min=0, max=1) + 1, fit_evals * x_fit.shape[0]


def scheduled(density, n):
    """The midpoint rule on the schedule's cells: n cells of equal mass."""
    alphas, weights = _equal_mass_cells(density, n)

    def fn(model, x, t, batch_size):
        return ig_module._path_integral(model, x, t, None, n, None, batch_size, False, None,
                                        nodes=(alphas, weights))
    return fn


def _equal_mass_cells(density: torch.Tensor, n: int):
    """Midpoint-rule nodes and weights of ``n`` cells of equal mass under a
    piecewise-constant ``density`` on equal cells of [0, 1]."""
    bins = density.numel()
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), (density / density.sum()).cumsum(0)])
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    i = (torch.searchsorted(cdf, u, right=True) - 1).clamp(0, bins - 1)
    e = edges[i] + (u - cdf[i]) / (cdf[i + 1] - cdf[i]) * (edges[i + 1] - edges[i])
    e[0], e[-1] = 0.0, 1.0
    return ((e[1:] + e[:-1]) / 2).tolist(), (e[1:] - e[:-1]).tolist()


def pilot(n_pilot: int, n_nodes: int, floor: float = 0.1):
    """The issue's forward-only pilot: F at ``n_pilot`` uniform nodes (forward only,
    zero baseline), a kink density per pilot cell from |second differences of F|
    (+ ``floor`` x their mean, so no cell is empty), node density ~ kink density^(1/3)
    (the spacing that minimises sum(kinks x width^2), the midpoint rule's error for
    jumps at random places), then a midpoint rule of ``n_nodes`` equal-mass cells,
    per image."""
    def fn(model, x, t, batch_size):
        a = torch.linspace(0, 1, n_pilot, dtype=x.dtype)
        rows = (a[None, :, None, None, None] * x[:, None]).flatten(0, 1)
        with torch.no_grad():
            out = torch.cat([model(rows[i:i + batch_size]) for i in range(0, rows.shape[0], batch_size)])
        f = out.view(x.shape[0], n_pilot, -1).gather(2, t.view(-1, 1, 1).expand(-1, n_pilot, 1))[..., 0].double()
        d2 = (f[:, 2:] - 2 * f[:, 1:-1] + f[:, :-2]).abs()
        d2 = torch.cat([d2[:, :1], d2, d2[:, -1:]], dim=1)  # at the path's ends: the neighbour's
        kinks = (d2[:, 1:] + d2[:, :-1]) / 2
        kinks = kinks + floor * kinks.mean(1, keepdim=True) + 1e-30
        attr = []
        for i in range(x.shape[0]):
            nodes = _equal_mass_cells(kinks[i] ** (1 / 3), n_nodes)
            attr.append(ig_module._path_integral(model, x[i:i + 1], t[i:i + 1], None, n_nodes, None, batch_size,
                                                 False, None, nodes=nodes))
        return torch.cat(attr)
    return fn


def oracle_bound(b: "Bench", n_img: int):
    """Hindsight oracle (why no node placement reaches GL-50's L2 at 17 nodes): per
    image, the gradients at ORACLE_FINE midpoint nodes (their mean is the reference);
    among midpoint rules whose cells have edges on a 1/ORACLE_GRID grid (node: the
    fine node nearest the cell's midpoint), dynamic programming finds the cells that
    minimise the sum of squared per-cell errors, knowing the whole path. Also: the
    share of fine intervals on which the gradient changes (the linear pieces the path
    crosses) and the share of the gradient's total change in alpha < 0.1."""
    fine, grid = ORACLE_FINE, ORACLE_GRID
    per = fine // grid
    key = ("oracle", n_img, fine, grid, ORACLE_BUDGETS)
    if key not in b.cache:
        model, x, target = b.model.model, b.x[:n_img], b.target[:n_img]
        alphas = (torch.arange(fine, dtype=torch.float64) + 0.5) / fine
        result = {"oracle": {n: [] for n in ORACLE_BUDGETS}, "uniform": {n: [] for n in ORACLE_BUDGETS},
                  "changes": [], "early": []}
        for i in range(n_img):
            parts = []
            for c in range(0, fine, b.bs):
                z = (alphas[c:c + b.bs].to(x.dtype)[:, None, None, None] * x[i]).requires_grad_(True)
                (g,) = torch.autograd.grad(model(z)[:, target[i]].sum(), z)
                parts.append(g.double().flatten(1))
            grads = torch.cat(parts) * x[i].double().flatten()  # (x - x') * grad F, zero baseline
            ref = grads.mean(0)
            jumps = (grads[1:] - grads[:-1]).norm(dim=1)
            result["changes"].append((jumps > 1e-7 * grads.norm(dim=1).max()).double().mean().item())
            result["early"].append((jumps[: fine // 10].sum() / jumps.sum()).item())
            prefix = torch.cat([torch.zeros(1, grads.shape[1], dtype=grads.dtype), grads.cumsum(0)])

            def node(lo, hi):
                return torch.clamp(torch.round((lo + hi) / 2 - 0.5).long(), lo, hi - 1)

            cost = torch.full((grid + 1, grid + 1), float("inf"), dtype=torch.float64)
            for a in range(grid):
                hi = torch.arange(a + 1, grid + 1) * per
                lo = torch.full_like(hi, a * per)
                err = (hi - lo)[:, None].double() * grads[node(lo, hi)] - (prefix[hi] - prefix[lo])
                cost[a, a + 1:] = (err * err).sum(1)

            def cells_error(cells):
                lo = torch.tensor([c[0] for c in cells]) * per
                hi = torch.tensor([c[1] for c in cells]) * per
                total = ((hi - lo)[:, None].double() * grads[node(lo, hi)]).sum(0) / fine
                return ((total - ref).norm() / ref.norm()).item()

            for n in ORACLE_BUDGETS:
                best = torch.full((n + 1, grid + 1), float("inf"), dtype=torch.float64)
                best[0, 0] = 0
                arg = torch.zeros((n + 1, grid + 1), dtype=torch.long)
                for c in range(1, n + 1):
                    best[c], arg[c] = (best[c - 1][:, None] + cost).min(0)
                cells, end = [], grid
                for c in range(n, 0, -1):
                    start = int(arg[c, end])
                    cells.append((start, end))
                    end = start
                result["oracle"][n].append(cells_error(cells))
                edges = [round(j * grid / n) for j in range(n + 1)]
                result["uniform"][n].append(cells_error(list(zip(edges[:-1], edges[1:]))))
        b.cache[key] = result
        b.save()
    r = b.cache[key]
    print(f"\n#### {b.name}: hindsight oracle on {n_img} images (midpoint rules, cell edges on a 1/{grid} grid, "
          f"from {fine} midpoint-node gradients per image)\n")
    print(f"fine intervals on which the gradient changes: median {q(r['changes'], .5):.3f}, "
          f"min {min(r['changes']):.3f}; share of the gradient's total change at alpha < 0.1: "
          f"median {q(r['early'], .5):.3f}\n")
    print("| cells (nodes) | uniform L2 median | uniform L2 p90 | oracle L2 median | oracle L2 p90 |")
    print("|---|---|---|---|---|")
    for n in ORACLE_BUDGETS:
        print(f"| {n} | {q(r['uniform'][n], .5):.3g} | {q(r['uniform'][n], .9):.3g} | "
              f"{q(r['oracle'][n], .5):.3g} | {q(r['oracle'][n], .9):.3g} |")


def equal_accuracy(per_image: dict, labels: dict, c: float, n_img: int):
    """Per family of settings: the fewest equivalent evaluations whose median and p90
    errors are both at most GL-50's, on each metric."""
    gl = per_image[("gausslegendre", 50)]
    found: dict = {}
    for key, (d, l2, _, e) in per_image.items():
        family = labels[key].split(" n=")[0].split(" max=")[0].split(" (")[0]
        if key == ("gausslegendre", 50):
            continue
        evals = (e["fb"] + c * e["f"]) / n_img
        for name, mine, theirs in (("delta", d, gl[0]), ("L2", l2, gl[1])):
            ok = q(mine.tolist(), .5) <= q(theirs.tolist(), .5) and q(mine.tolist(), .9) <= q(theirs.tolist(), .9)
            best = found.setdefault(family, {}).get(name)
            if ok and (best is None or evals < best):
                found[family][name] = evals
    print("\nfewest equivalent evaluations per image at which median and p90 are both <= GL-50's "
          "(— : not within the sweep):\n")
    print("| family | delta | L2 |")
    print("|---|---|---|")
    for family, v in found.items():
        cells = [f"{v[m]:.1f}" if m in v else "—" for m in ("delta", "L2")]
        print(f"| {family} | {cells[0]} | {cells[1]} |")


def row(label, evals, metrics):
    cells = [label, f"{evals:.1f}"]
    for m in metrics:
        cells += [f"{q(m, 0.5):.3g}", f"{q(m, 0.9):.3g}"]
    return "| " + " | ".join(cells) + " |"


def bench_model(b: Bench, c: float, adaptive_ok: bool, ref_lo: int, x_fit=None, quick=False, adaptive_only=False,
                check_images=None):
    """``quick``: a reduced sweep (resnet18 at 224x224 on the CPU); ``check_images``:
    the reference's check (n = ``ref_lo``) on the first that many images only."""
    budgets = (16, 32) if quick else BUDGETS
    adaptive_budgets = (17, 25, 33) if quick else ADAPTIVE_BUDGETS
    jump_budgets = (17, 33) if quick else JUMP_BUDGETS
    n_img = b.x.shape[0]
    print(f"\n### {b.name}: {n_img} images, reference midpoint n={b.ref_n} (checked against n={ref_lo}), "
          f"c = {c:.3f}\n", flush=True)
    settings = []
    for method in FIXED_RULES:
        for n in budgets + ((50,) if method == "gausslegendre" else ()):
            settings.append((f"{method} n={n}", (method, n), fixed(method, n)))
    if adaptive_ok:
        for n in adaptive_budgets:
            settings.append((f"adaptive tol=0 max={n}", ("adaptive", 0.0, n), adaptive(n, 0.0)))
        for tol in () if quick else ADAPTIVE_TOLS:
            settings.append((f"adaptive tol={tol} max=64", ("adaptive", tol, 64), adaptive(64, tol)))
        for n in jump_budgets:
            settings.append((f"adaptive select=jump tol=0 max={n}", ("jump", 0.0, n), adaptive(n, 0.0, select="jump")))
        if x_fit is not None:
            density, fit_rows = fit_schedule(b, x_fit)
            print(f"per-model schedule fitted on {x_fit.shape[0]} other test images: {fit_rows} forward+backward "
                  f"rows, once per model", flush=True)
            for n in SCHEDULE_BUDGETS:
                settings.append((f"per-model schedule (midpoint) n={n}", ("schedule", n), scheduled(density, n)))
        if not quick:
            for n_pilot, n_nodes in PILOTS:
                settings.append((f"forward-only pilot P={n_pilot} n={n_nodes}", ("pilot", n_pilot, n_nodes),
                                 pilot(n_pilot, n_nodes)))
    if adaptive_only:  # fill the cache with the adaptive family only (no reference, no tables)
        for _, key, fn in settings:
            if key[0] not in FIXED_RULES:
                b.run(key, fn)
        return {}
    ref = b.run(("ref", b.ref_n), fixed("riemann_middle", b.ref_n))["attr"]
    n_check = min(n_img, check_images or n_img)
    key = ("ref", ref_lo) if n_check == n_img else ("ref", ref_lo, n_check)
    ref_lo_attr = b.run(key, fixed("riemann_middle", ref_lo), first=n_check)["attr"]
    ref_err = rel_l2(ref_lo_attr, ref[:n_check])
    rows, per_image = [], {}
    for label, key, fn in settings:
        e = b.run(key, fn)
        a = e["attr"]
        evals = (e["fb"] + c * e["f"]) / n_img
        d, l2, ov = rel_delta(a, b.gap), rel_l2(a, ref), top_overlap(a, ref)
        per_image[key] = (d, l2, ov, e)
        rows.append(row(label, evals, [d.tolist(), l2.tolist(), ov.tolist()]) + f" {e['wall']:.1f} |")
    print("| setting | equiv. evals/image | delta median | delta p90 | L2 median | L2 p90 | top-5% median "
          "| top-5% p90 | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nreference check on the first {n_check} images: rel. L2(n={ref_lo}, n={b.ref_n}) median "
          f"{q(ref_err.tolist(), .5):.3g}, "
          f"p90 {q(ref_err.tolist(), .9):.3g}", flush=True)
    gl = per_image[("gausslegendre", 50)]
    ratio = ref_err / gl[1][:n_check]
    print(f"reference difference / GL-50 L2 error, per image: median {q(ratio.tolist(), .5):.3g}, "
          f"max {ratio.max().item():.3g}; images with ratio <= 0.1: {(ratio <= 0.1).sum().item()}/{n_check}")
    if adaptive_ok:
        print("\npaired per image, adaptive (max_evals 17, 25, 33) vs gausslegendre n=50:\n")
        print("| adaptive setting | evals/image (mean, max) | metric | adaptive <= GL50 | sign-test p "
              "| adaptive median | GL50 median | adaptive p90 | GL50 p90 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for key in [k for k in per_image if (k[0] in ("adaptive", "jump") and (k[2] in (17, 25, 33) or k[1] > 0))
                    or k[0] in ("schedule", "pilot")]:
            d, l2, ov, e = per_image[key]
            ev = e["info"]["evals"].double() if e["info"] else torch.full((n_img,), (e["fb"] + c * e["f"]) / n_img)
            for name, mine, theirs in (("delta", d, gl[0]), ("L2", l2, gl[1])):
                wins = int((mine < theirs).sum())
                losses = int((mine > theirs).sum())
                label = (f"schedule n={key[1]}" if key[0] == "schedule" else
                         f"pilot P={key[1]} n={key[2]}" if key[0] == "pilot" else
                         f"{key[0]} tol={key[1]} max={key[2]}")
                print(f"| {label} | {ev.mean():.1f}, {ev.max():.0f} | {name} | "
                      f"{int((mine <= theirs).sum())}/{n_img} | {sign_test(wins, losses):.2g} | "
                      f"{q(mine.tolist(), .5):.3g} | {q(theirs.tolist(), .5):.3g} | {q(mine.tolist(), .9):.3g} | "
                      f"{q(theirs.tolist(), .9):.3g} |")
        equal_accuracy(per_image, {key: label for label, key, _ in settings}, c, n_img)
    return per_image


def bench_gnl(b: Bench, c: float, adaptive_ok: bool):
    n = b.gnl_n
    print(f"\n### {b.name} GNL-IG: {n} images, reference midpoint n=1024 (checked against n=512)\n", flush=True)
    ref = b.run(("gnl-ref", 1024), fixed_gnl("riemann_middle", 1024), gnl=True)["attr"]
    ref_lo = b.run(("gnl-ref", 512), fixed_gnl("riemann_middle", 512), gnl=True)["attr"]
    err = rel_l2(ref_lo, ref)
    settings = [(f"gausslegendre n={k}", ("gnl", "gausslegendre", k), fixed_gnl("gausslegendre", k))
                for k in (16, 50)]
    settings.append(("riemann_middle n=16", ("gnl", "riemann_middle", 16), fixed_gnl("riemann_middle", 16)))
    if adaptive_ok:
        settings += [(f"adaptive tol=0 max={k}", ("gnl", "adaptive", k), adaptive(k, 0.0, gnl=True))
                     for k in (17, 33)]
    print("| setting | equiv. evals/image | L2 median | L2 p90 | top-5% median | top-5% p90 |")
    print("|---|---|---|---|---|---|")
    for label, key, fn in settings:
        e = b.run(key, fn, gnl=True)
        l2, ov = rel_l2(e["attr"], ref), top_overlap(e["attr"], ref)
        print(row(label, (e["fb"] + c * e["f"]) / n, [l2.tolist(), ov.tolist()]))
    print(f"\nreference check: rel. L2(n=512, n=1024) median {q(err.tolist(), .5):.3g}, "
          f"p90 {q(err.tolist(), .9):.3g}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--gnl-images", type=int, default=8)
    p.add_argument("--resnet18-images", type=int, default=0)
    p.add_argument("--oracle-images", type=int, default=0, help="hindsight-oracle images per shapes model")
    p.add_argument("--check-images", type=int, default=None,
                   help="check the shapes reference (n = 2048 against 1024) on the first N images only (CPU time)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--models", default="shapes-vgg,shapes-resnet")
    p.add_argument("--no-adaptive", action="store_true", help="only the fixed rules (fills the cache)")
    p.add_argument("--adaptive-only", action="store_true",
                   help="only the adaptive family, no reference or tables (fills the cache; with --no-adaptive's "
                        "run into another --cache, the two fill one model's cache in two processes: --merge)")
    p.add_argument("--merge", default=None, metavar="DIR",
                   help="first add the entries of DIR's cache files to --cache's (same file names)")
    p.add_argument("--cache", default="/tmp/fastattr-adaptive-ig")
    args = p.parse_args()
    for name in ("images", "gnl_images", "resnet18_images", "oracle_images", "check_images"):
        value = getattr(args, name)
        if value is not None and value < (1 if name in ("images", "check_images") else 0):
            p.error(f"--{name.replace('_', '-')} must be >= {1 if name in ('images', 'check_images') else 0}, "
                    f"got {value}")
    if args.oracle_images > args.images:
        p.error(f"--oracle-images must be at most --images ({args.images}), got {args.oracle_images}")
    torch.set_num_threads(args.threads)
    os.makedirs(args.cache, exist_ok=True)
    if args.merge:
        wanted = [m for m in args.models.split(",") if m] + (["resnet18-random"] if args.resnet18_images else [])
        for name in os.listdir(args.merge):
            if name.endswith(".pt") and any(name.startswith(m + "-") for m in wanted):
                theirs = torch.load(os.path.join(args.merge, name))
                path = os.path.join(args.cache, name)
                mine = torch.load(path) if os.path.exists(path) else {}
                mine.update({k: v for k, v in theirs.items() if k not in mine})
                torch.save(mine, path)
                print(f"merged {len(theirs)} entries of {args.merge}/{name}")
    adaptive_ok = not args.no_adaptive
    ds = data.load("shapes", split="test")
    x = torch.stack([ds[i][0] for i in range(args.images)])
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch_size {args.batch_size}")
    for name in [m for m in args.models.split(",") if m]:
        model = models.load(name).eval()
        c = measure_c(model, x, args.batch_size)
        b = Bench(name, model, x, args.cache, args.batch_size, args.gnl_images, 2048)
        x_fit = torch.stack([ds[i][0] for i in range(args.images, args.images + FIT_IMAGES)])
        bench_model(b, c, adaptive_ok, 1024, x_fit, adaptive_only=args.adaptive_only, check_images=args.check_images)
        if args.oracle_images:
            oracle_bound(b, args.oracle_images)
        if args.gnl_images:
            bench_gnl(b, c, adaptive_ok)
    if args.resnet18_images:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=1000).eval()
        xr = torch.nn.functional.interpolate(x[:args.resnet18_images], size=224, mode="bilinear")
        c = measure_c(model, xr, 8)
        b = Bench("resnet18-random", model, xr, args.cache, 16, 0, 1024)
        bench_model(b, c, adaptive_ok, 512, quick=True, adaptive_only=args.adaptive_only)


if __name__ == "__main__":
    main()
