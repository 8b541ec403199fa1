"""The ``fastattr`` command line: ``run``, ``demo`` and ``bench``.

``fastattr run``   attributions for a folder of images or a bundled data set, in
                   resumable shards with a manifest (also under ``torchrun``);
``fastattr demo``  a few bundled images explained with several methods, as heatmaps;
``fastattr bench`` each method against a plain-PyTorch loop and Captum.

Run ``fastattr COMMAND --help`` for the options. The work is done by
:mod:`fastattr.jobs`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Convenience flags for common method options: flag dest -> the method's keyword.
OPTION_FLAGS = {
    "n_steps": ("--n-steps", int, "integration steps (integrated_gradients, gnl_integrated_gradients)"),
    "integration": ("--integration", str, "IG quadrature: gausslegendre, riemann_left/right/middle/trapezoid "
                                          "(the methods' 'method' option), or adaptive"),
    "tolerance": ("--tolerance", float, "IG with --integration adaptive: stop an image once its trapezoid "
                                        "residuals sum to at most this fraction of |F(x) - F(x')|"),
    "max_evals": ("--max-evals", int, "IG with --integration adaptive: most evaluations per image"),
    "baselines": ("--baselines", float, "IG baseline value (a constant image)"),
    "internal_batch_size": ("--internal-batch-size", int, "rows per forward pass inside a method (its 'batch_size')"),
    "n_samples": ("--n-samples", int, "noise samples (smooth_grad)"),
    "stdevs": ("--stdevs", float, "noise standard deviation, absolute (smooth_grad)"),
    "kind": ("--kind", str, "smoothgrad, smoothgrad_sq or vargrad (smooth_grad)"),
    "base": ("--base", str, "base method of smooth_grad"),
    "n_roots": ("--n-roots", int, "roots (smooth_taylor)"),
    "noise_scale": ("--noise-scale", float, "noise scale (smooth_taylor)"),
}
OPTION_NAMES = {"integration": "method", "internal_batch_size": "batch_size"}

RUN_DEFAULTS = {
    "target": "auto", "batch_size": 16, "device": "cpu", "dtype": "float32", "split": "test",
    "format": "safetensors", "shard_size": 256, "seed": 0, "resize": "crop", "num_workers": 0, "threads": None,
    "dist_timeout": 86400.0, "on_error": "fail", "progress_interval": 30.0, "output_key": None, "max_memory": None,
}


def _method_names() -> list[str]:
    from .methods import METHODS

    return sorted(METHODS)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), _parse_value(value)


def _int_at_least(minimum: int, what: str):
    """An argparse type: an int >= ``minimum``, else an error saying ``what`` was expected."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v

    return parse


def _metric_list(text: str) -> tuple[str, ...]:
    """An argparse type: ``--metrics deletion,insertion,pointing``, checked here,
    before anything is written to --out."""
    from .jobs.spec import JobError, check_metrics

    try:
        return check_metrics(text)
    except JobError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--metrics: ")) from None


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "a non-negative integer")


def _add_run_parser(sub) -> argparse.ArgumentParser:
    from .jobs.storage import FORMATS

    p = sub.add_parser(
        "run", help="attributions for a folder of images or a bundled data set, in resumable shards",
        description="Compute attributions for every image of --data with --method and write them to --out in "
                    "shards with a manifest. Rerunning the same command resumes an interrupted run; "
                    "after files were added, removed or changed it computes only the new and changed images. Under "
                    "torchrun (torchrun --nproc-per-node=K -m fastattr run ...) the shards are spread over the "
                    "processes.")
    g = p.add_argument_group("job")
    g.add_argument("--model", help="bundled model name (see fastattr.models.available()), torchvision:NAME, "
                                   "timm:NAME, pkg.module:callable or a TorchScript/exported model file")
    g.add_argument("--data", help="a directory of PNG/JPEG images (searched recursively) or bundled:NAME")
    g.add_argument("--method", choices=_method_names(), help="attribution method")
    g.add_argument("--out", help="output directory (created; resumed when it holds the same job)")
    g.add_argument("--config", help="JSON (or YAML, with PyYAML) file of the same keys as the flags, "
                                    "e.g. {\"model\": ..., \"n_steps\": 32}; flags given on the command line win")
    m = p.add_argument_group("method options (passed to the method; only those given are passed)")
    for dest, (flag, typ, text) in OPTION_FLAGS.items():
        m.add_argument(flag, dest=dest, type=typ, default=None, help=text)
    m.add_argument("-O", "--method-option", dest="method_option", action="append", type=_method_option, default=None,
                   metavar="KEY=VALUE", help="any keyword of the method; VALUE is parsed as JSON when it can be "
                                             "(numbers, true/false, null, lists), else taken as a string")
    d = p.add_argument_group("data and targets")
    d.add_argument("--target", help="auto (argmax; predicted foreground for segmentation), pred, label, "
                                    "a class index or a class name (segmentation: that channel over the pixels "
                                    "predicted as that class); segmentation also: box:TOP,LEFT,BOTTOM,RIGHT (the "
                                    "predicted foreground in a box of output pixels) or mask (NAME.mask.png "
                                    "beside each image NAME.EXT: class indices, or 0/255)")
    d.add_argument("--split", help="split of a bundled data set")
    d.add_argument("--limit", type=_nonneg_int, help="only the first N images")
    d.add_argument("--input-size", type=_positive_int, nargs="+", metavar=("H", "W"),
                   help="resize images to H W (default: the model's input size)")
    d.add_argument("--resize", choices=("crop", "stretch"),
                   help="crop: scale the shorter side and crop the centre; stretch: scale both sides "
                        "(the crop box of each image is recorded in the manifest; transparent pixels are "
                        "composited onto white)")
    d.add_argument("--on-error", choices=("fail", "skip"),
                   help="an image that cannot be read: fail (naming the file) or skip it and record it in the "
                        "manifest as skipped, with the reason")
    d.add_argument("--output-key", metavar="KEY",
                   help="explain this entry of a model that returns a dict (e.g. 'out' of torchvision "
                        "segmentation models) or a tuple (an index)")
    e = p.add_argument_group("execution")
    e.add_argument("--batch-size", type=_positive_int, help="images per method call")
    e.add_argument("--device", help="cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    e.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), help="model and input precision")
    e.add_argument("--seed", type=int, help="seed of stochastic methods (each shard derives its own) and of the "
                                            "model's random weights (?weights=none), so such jobs resume")
    e.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget of one forward/backward pass when a method picks its own chunk size, "
                        "e.g. 2G or 512M (estimated at 512 bytes of activations per input element)")
    e.add_argument("--num-workers", type=_nonneg_int, help="DataLoader worker processes for decoding images")
    e.add_argument("--threads", type=_positive_int, help="torch CPU threads (torch.set_num_threads; default: "
                                                        "torch's choice, 1 per process under torchrun)")
    e.add_argument("--dist-timeout", type=float, help="seconds ranks wait for each other under torchrun")
    q = p.add_argument_group("quality metrics (fastattr.metrics; stored per image beside the attribution)")
    q.add_argument("--metrics", type=_metric_list, default=None, metavar="NAMES",
                   help="comma-separated: deletion, insertion (RISE AUCs, one image row per step, the probability "
                        "of the explained target), pointing (pointing-game hit and energy; needs ground-truth masks, "
                        "i.e. a bundled data set). Means are printed at the end")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=FORMATS, help="shard file format")
    o.add_argument("--shard-size", type=_positive_int, help="images per shard file")
    o.add_argument("--heatmaps", action="store_true", default=None, help="also write a heatmap overlay PNG per image")
    o.add_argument("--overwrite", action="store_true", default=None,
                   help="discard an existing output of a different job in --out")
    o.add_argument("--verify", action="store_true", default=None,
                   help="on resume, check the sha256 of every finished shard (reads them all)")
    o.add_argument("-q", "--quiet", action="store_true", default=None, help="no progress bar or messages")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: a bar when stderr is a terminal, else a plain "
                        "progress line every --progress-interval seconds)")
    o.add_argument("--progress-interval", type=float, metavar="SECONDS",
                   help="seconds between plain progress lines when stderr is not a terminal")
    # Flags default to None so that --config can fill them in; show the real defaults.
    for action in p._actions:
        if action.dest in RUN_DEFAULTS and RUN_DEFAULTS[action.dest] is not None and action.help:
            action.help += f" (default: {RUN_DEFAULTS[action.dest]})"
    return p


def _load_config(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise SystemExit(f"fastattr: error: cannot read --config {path}: {e.strerror}")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SystemExit(f"fastattr: error: --config {path} is YAML but PyYAML is not installed; use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SystemExit(f"fastattr: error: --config {path} is not valid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"fastattr: error: --config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"fastattr: error: --config {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config: dict) -> None:
    """Values from the config file fill in what the command line did not give."""
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config")} | {"method_options"}
    unknown = sorted(set(config) - known)
    if unknown:
        parser.error(f"--config has unknown keys: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    for key, value in config.items():
        if key == "method_options":
            if not isinstance(value, dict):
                parser.error("--config: method_options must be a mapping")
            continue
        if getattr(args, key, None) is None:
            action = next(a for a in parser._actions if a.dest == key)
            if action.choices is not None and value not in action.choices:
                parser.error(f"--config: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
            if key == "method_option":
                value = [_method_option(v) if isinstance(v, str) else tuple(v) for v in value]
            setattr(args, key, value)


def _run_config(parser: argparse.ArgumentParser, args: argparse.Namespace):
    from .jobs import JobConfig

    config = _load_config(args.config) if args.config else {}
    _apply_config(parser, args, config)
    missing = [f"--{k}" for k in ("model", "data", "method", "out") if getattr(args, k) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    if args.method not in _method_names():
        parser.error(f"argument --method: invalid choice: {args.method!r} (choose from {', '.join(_method_names())})")
    options = dict(config.get("method_options") or {})
    for key, value in args.method_option or []:
        options[key] = value
    for dest in OPTION_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            options[OPTION_NAMES.get(dest, dest)] = value
    kw = {k: getattr(args, k) for k in RUN_DEFAULTS}
    kw = {k: (RUN_DEFAULTS[k] if v is None else v) for k, v in kw.items()}
    size = args.input_size
    if isinstance(size, int):
        size = [size]
    if size is not None and len(size) not in (1, 2):
        parser.error("--input-size takes H or H W")
    return JobConfig(
        model=args.model, data=args.data, method=args.method, out=args.out, method_options=options,
        limit=args.limit, heatmaps=bool(args.heatmaps), overwrite=bool(args.overwrite), quiet=bool(args.quiet),
        verify=bool(args.verify), progress=args.progress, metrics=_config_metrics(parser, args.metrics),
        input_size=None if size is None else (size[0], size[-1]), **kw)


def _config_metrics(parser, value) -> tuple[str, ...]:
    """--metrics from the command line (already checked) or a --config file (a
    string or a list), checked like the flag."""
    if value is None or isinstance(value, tuple):
        return value or ()
    from .jobs.spec import JobError, check_metrics

    try:
        return check_metrics(value)
    except JobError as e:
        parser.error(f"--config: {e}")


def _add_demo_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="explain a few bundled images with several methods; writes heatmap grids",
                       description="Explain a handful of bundled 'shapes' (and 'lesions') images with several "
                                   "methods; writes heatmap grids per method and a summary.")
    p.add_argument("--out", default=os.path.join("fastattr-out", "demo"), help="output directory")
    p.add_argument("--images", type=_nonneg_int, default=8, help="shapes images")
    p.add_argument("--lesion-images", type=_nonneg_int, default=2, help="lesions images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (on a machine shared with other jobs, 1 is often much faster)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--n-steps", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n-samples", type=_positive_int, default=None, help=argparse.SUPPRESS)
    return p


def _add_bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="time each method against a plain-PyTorch loop and Captum",
                       description="End-to-end timing of every method on a bundled model against a pure-PyTorch "
                                   "baseline (a plain autograd loop, no hooks) and Captum when installed.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="small batch, few steps, 2 repeats (the default)")
    size.add_argument("--full", dest="quick", action="store_false", help="larger batch and steps, 5 repeats")
    p.add_argument("--model", default="shapes-vgg", help="bundled model (or any --model of fastattr run)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to time (default: all)")
    p.add_argument("--batch", type=_positive_int, default=None, help="images per call")
    p.add_argument("--n-steps", type=_positive_int, default=None, help="IG steps / smooth_grad samples")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--input-size", type=_positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size when the model has no known size (random inputs)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-captum", action="store_true", help="do not time Captum")
    p.add_argument("--json", dest="json_out", default=None, help="also write the table as JSON here")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastattr", description=__doc__.split("\n\n")[0].strip())
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fastattr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.run_parser = _add_run_parser(sub)
    _add_demo_parser(sub)
    _add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .jobs.spec import JobError

    try:
        if args.command == "run":
            from .jobs import run_job

            cfg = _run_config(parser.run_parser, args)
            run_job(cfg)
        elif args.command == "demo":
            from .jobs.demo import run_demo

            run_demo(out=args.out, n_shapes=args.images, n_lesions=args.lesion_images, device=args.device,
                     quiet=args.quiet, n_steps=args.n_steps, n_samples=args.n_samples, threads=args.threads)
        elif args.command == "bench":
            from .jobs.bench import run_bench

            run_bench(model=args.model, methods=args.methods, quick=args.quick, batch=args.batch,
                      n_steps=args.n_steps, repeats=args.repeats, device=args.device, captum=not args.no_captum,
                      json_out=args.json_out, input_size=args.input_size, threads=args.threads)
    except JobError as e:
        print(f"fastattr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            print("\nfastattr: interrupted; finished shards are kept - rerun the same command to resume",
                  file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
