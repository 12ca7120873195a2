"""The model-zoo command line: ``resnet-backbones`` (or ``python -m resnet_backbones``).

    resnet-backbones presets [--task detection|classification]
    resnet-backbones weights [--preset P]
    resnet-backbones info NAME                  # a preset or zoo weights: params, GMACs, top-1 ...
    resnet-backbones download NAME... [--cache DIR]
    resnet-backbones verify [--cache DIR] [--remove-corrupt]
    resnet-backbones convert --source S --arch A IN OUT
    resnet-backbones export --config C --format torchscript|onnx --output F [--what W] [KEY VALUE ...]

``download`` fetches zoo weights (or a preset's default weights) into the cache, verified, for
compute nodes without internet: copy the folder over and point ``RESNET_BACKBONES_WEIGHTS_CACHE``
at it there. ``verify`` re-hashes every cached zoo file against the catalog.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Optional, Sequence

from .cli_errors import add_traceback_argument, report_user_error

__all__ = ["main"]

PROG = "resnet-backbones"


class CommandError(Exception):
    """A user error of the command line: printed as one line, exit status 2."""


def _table(rows: list[dict[str, Any]]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def _mega(count: Optional[int]) -> str:
    return "-" if count is None else f"{count / 1e6:.2f}M"


# ------------------------------------------------------------------------------------------
# presets, weights
# ------------------------------------------------------------------------------------------
def _default_weights_name(preset: str) -> str:
    from .api import preset_default_weights

    entry = preset_default_weights(preset)
    return entry.name if entry is not None else "-"


def cmd_presets(args: argparse.Namespace) -> int:
    from .api import list_presets
    from .presets import PRESETS

    rows = [
        {
            "preset": name,
            "task": PRESETS[name].task,
            "forms": ",".join(PRESETS[name].forms) or "-",
            "paper": PRESETS[name].paper,
            "default weights": _default_weights_name(name),
        }
        for name in list_presets(args.task)
    ]
    print(_table(rows))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from .api import list_weights
    from .presets import ARCHS
    from .weights.catalog import CATALOG

    rows = []
    for name in list_weights(args.preset):
        entry = CATALOG[name]
        rows.append(
            {
                "weights": name,
                "preset": ARCHS[entry.arch].preset,
                "source": entry.source,
                "params": _mega(entry.num_params),
                "top-1": "-" if entry.top1 is None else f"{entry.top1:.2f}",
                "licence": entry.license,
            }
        )
    print(_table(rows))
    print(
        "\nLoad one with MODEL.WEIGHTS resnet_backbones://NAME, or create_backbone(P, weights=NAME)."
    )
    return 0


# ------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------
def _weights_info(name: str) -> list[tuple[str, Any]]:
    from .complexity import arch_complexity
    from .presets import ARCHS
    from .weights.catalog import CATALOG
    from .weights.download import cache_path
    from .weights.resolve import zoo_url

    entry = CATALOG[name]
    counts = arch_complexity(entry.arch)
    cached = cache_path(zoo_url(entry))
    return [
        ("weights", f"resnet_backbones://{name}"),
        ("network", f"{entry.arch} ({entry.source}), preset {ARCHS[entry.arch].preset}"),
        ("params", f"{_mega(entry.num_params)} published ({entry.num_params_source}); "
                   f"{_mega(counts['params'])} counted"),
        ("GMACs", f"{counts['macs'] / 1e9:.2f} at {counts['input'][0]}x{counts['input'][1]} "
                  "(counted, fvcore)"),
        ("top-1", "not published" if entry.top1 is None else f"{entry.top1:.3f} %"),
        ("top-1 source", entry.top1_source),
        ("test protocol", entry.test_protocol),
        ("input", f"{entry.input.format}, mean {list(entry.input.mean)}, "
                  f"std {list(entry.input.std)}"),
        ("licence", entry.license + (" (non-commercial)" if entry.non_commercial else "")),
        ("licence source", entry.license_source),
        ("URL", entry.url),
        ("SHA-256", entry.sha256 or (f"{entry.sha256_prefix}... (prefix)"
                                     if entry.sha256_prefix else "not published")),
        ("cached", cached if os.path.isfile(cached) else "no"),
    ]  # fmt: skip


def _preset_info(name: str) -> list[tuple[str, Any]]:
    from .api import list_weights
    from .complexity import preset_complexity
    from .presets import PRESETS

    preset = PRESETS[name]
    counts = preset_complexity(name, detection=False)["classifier"]
    size = "x".join(map(str, counts["input"]))
    return [
        ("preset", name),
        ("task", preset.task),
        ("paper", preset.paper),
        ("forms", ", ".join(preset.forms) or "none (a classifier)"),
        ("params", f"{_mega(counts['params'])} ({counts['num_classes']}-way classifier, counted)"),
        ("GMACs", f"{counts['macs'] / 1e9:.2f} at {size} (counted, fvcore)"),
        ("config keys", ", ".join(f"{k}={v}" for k, v in preset.keys.items())),
        ("detection configs", ", ".join(preset.configs) or "-"),
        ("default weights", _default_weights_name(name)),
        ("zoo weights", ", ".join(list_weights(name)) or "-"),
    ]


def cmd_info(args: argparse.Namespace) -> int:
    from .presets import PRESETS
    from .weights.catalog import CATALOG

    if args.name in CATALOG:
        lines = _weights_info(args.name)
    elif args.name in PRESETS:
        lines = _preset_info(args.name)
    else:
        raise CommandError(
            f"info: {args.name!r} is neither a preset nor zoo weights; presets: "
            f"{', '.join(PRESETS)}; weights: {', '.join(CATALOG)}"
        )
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


# ------------------------------------------------------------------------------------------
# download, verify
# ------------------------------------------------------------------------------------------
def _use_cache(cache: Optional[str]) -> str:
    from .weights.download import CACHE_ENV, default_cache_dir

    if cache:
        os.environ[CACHE_ENV] = os.path.abspath(cache)
    return default_cache_dir()


def _zoo_name(name: str) -> str:
    """A catalog name for ``name``: itself, or the default weights of a preset."""
    from .api import preset_default_weights
    from .presets import PRESETS
    from .weights.catalog import CATALOG

    if name in CATALOG:
        return name
    if name in PRESETS:
        entry = preset_default_weights(name)
        if entry is None:
            raise CommandError(f"download: preset {name!r} has no default weights in the zoo")
        return entry.name
    raise CommandError(
        f"download: {name!r} is neither zoo weights nor a preset; weights: "
        f"{', '.join(CATALOG)} (or a preset name, for its default weights)"
    )


def cmd_download(args: argparse.Namespace) -> int:
    from .weights.catalog import CATALOG
    from .weights.resolve import ZOO_PREFIX, resolve

    cache = _use_cache(args.cache)
    names = [_zoo_name(n) for n in args.names]  # every name checked before any download
    unhashed = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", flush=True)
        path = resolve(ZOO_PREFIX + name)
        print(f"    {path}", flush=True)
        entry = CATALOG[name]
        if not (entry.sha256 or entry.sha256_prefix):
            unhashed.append(name)
    hashed = len(set(names)) - len(set(unhashed))
    print(
        f"Done: {len(set(names))} file(s) in {cache}, {hashed} verified against their published "
        f"SHA-256"
        + (f"; no hash is published for {', '.join(sorted(set(unhashed)))}" if unhashed else "")
        + ". On a machine without internet, copy that folder and set "
        "RESNET_BACKBONES_WEIGHTS_CACHE to it."
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .weights.catalog import CATALOG
    from .weights.download import cache_path, sha256_of_file
    from .weights.resolve import zoo_url

    cache = _use_cache(args.cache)
    known: set[str] = set()
    rows, corrupt = [], []
    for name, entry in CATALOG.items():
        for url in dict.fromkeys((entry.url, zoo_url(entry))):
            path = cache_path(url, cache)
            known.add(os.path.abspath(path))
            if not os.path.isfile(path):
                continue
            digest = sha256_of_file(path)
            if entry.sha256:
                ok = digest == entry.sha256
            elif entry.sha256_prefix:
                ok = digest.startswith(entry.sha256_prefix)
            else:
                ok = None
            status = {True: "ok", False: "CORRUPT", None: "no published hash"}[ok]
            rows.append({"weights": name, "status": status, "file": path})
            if ok is False:
                corrupt.append(path)
    others = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(cache)
        for f in files
        if os.path.abspath(os.path.join(root, f)) not in known
    )
    if rows:
        print(_table(rows))
    print(
        f"{len(rows)} zoo file(s) in {cache}: {len(rows) - len(corrupt)} verified or unhashed, "
        f"{len(corrupt)} corrupt; {len(others)} other file(s) not checked (URLs and downloads "
        "outside the catalog)."
    )
    if corrupt:
        if args.remove_corrupt:
            for path in corrupt:
                os.remove(path)
            print(f"Removed {len(corrupt)} corrupt file(s); the next use downloads them again.")
            return 0
        print("Remove them (--remove-corrupt); the next use downloads them again.")
        return 1
    return 0


# ------------------------------------------------------------------------------------------
# convert
# ------------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    from .weights.export import export_weights

    out, config = export_weights(
        args.input, args.output, source=args.source, arch=args.arch, form=args.form
    )
    print(f"Wrote {out}\nWrote {config}\nTrain with: resnet-backbones-train --config {config}")
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``convert`` (tools/convert_weights.py is this command)."""
    from .presets import ARCHS, DETECTOR_FORMS
    from .weights.export import EXPORT_SOURCES

    parser.add_argument(
        "--source", required=True, choices=EXPORT_SOURCES, help="the library that wrote IN"
    )
    parser.add_argument("--arch", required=True, metavar="NAME", help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument(
        "--form",
        default="FPN",
        choices=DETECTOR_FORMS,
        help="the Faster R-CNN form of the config written beside OUT (default: FPN)",
    )
    parser.add_argument(
        "input",
        metavar="IN",
        help="weights file, https:// URL, resnet_backbones://NAME or hf-hub:ORG/NAME[@REVISION]",
    )
    parser.add_argument(
        "output",
        metavar="OUT",
        help="converted file (.pth, or .safetensors); its config is written beside it, with the "
        "extension .yaml",
    )


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """Writes the backbone or the detector of a config to TorchScript or ONNX, then prints the
    parity with eager PyTorch that it checked (resnet_backbones.export)."""
    from .engine import load_config, use_cpu_if_no_cuda
    from .export import export_model

    misplaced = [opt for opt in args.opts if opt.startswith("--")]
    if misplaced:
        raise CommandError(
            f"{misplaced[0]} comes after the KEY VALUE overrides; put the options first"
        )
    cfg = use_cpu_if_no_cuda(load_config(args.config, args.opts))
    parity = export_model(
        cfg, args.output, args.format, what=args.what, size=tuple(args.size), name=args.config
    )
    height, width = args.size
    print(f"Wrote {args.output} ({args.what}, {args.format})")
    print(f"Parity with eager PyTorch on a {height}x{width} input:")
    print(parity.summary())
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``export`` (tools/export_model.py is this command)."""
    from .export import EXPORT_FORMATS, EXPORT_TARGETS

    parser.add_argument("--config", required=True, metavar="C", help="config file (or zoo name)")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--output", required=True, metavar="F", help="the file to write")
    parser.add_argument(
        "--what",
        default="backbone",
        choices=EXPORT_TARGETS,
        help="the backbone (scripted; ONNX with dynamic sizes) or the whole detector (traced "
        "through detectron2's TracingAdapter at --size); default: backbone",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=(224, 224),
        metavar=("H", "W"),
        help="the sample input the parity is checked on (and a detector is traced at); "
        "default: 224 224",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides"
    )


def cmd_plot(args: argparse.Namespace) -> int:
    """The learning curve of a run from its ``metrics.json``: a pretraining run's errors
    (``train_error`` in it) or a detection run's losses and AP."""
    import os

    from .visualize import plot_classification_curve, plot_learning_curve, read_metrics

    metrics = args.metrics
    if os.path.isdir(metrics):
        metrics = os.path.join(metrics, "metrics.json")
    if not os.path.isfile(metrics):
        raise CommandError(f"{metrics} does not exist: give a run's OUTPUT_DIR or its metrics.json")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(metrics)), "learning_curve.png")
    pretraining = any("train_error" in r for r in read_metrics(metrics))
    plot = plot_classification_curve if pretraining else plot_learning_curve
    print(f"Wrote {plot(metrics, out, title=args.title)}")
    return 0


# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="resnet_backbones' presets and model zoo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("presets", help="list the presets (named networks)")
    p.add_argument("--task", choices=("detection", "classification"))
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("weights", help="list the model-zoo weights")
    p.add_argument("--preset", metavar="P", help="only the weights of preset P")
    p.set_defaults(run=cmd_weights)

    p = sub.add_parser("info", help="params, GMACs, top-1, licence, URL and hash of one name")
    p.add_argument("name", metavar="NAME", help="a preset or zoo weights")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("download", help="fetch zoo weights into the cache, verified")
    p.add_argument("names", nargs="+", metavar="NAME", help="zoo weights, or a preset")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: the weights cache)")
    p.set_defaults(run=cmd_download)

    p = sub.add_parser("verify", help="re-hash the cached zoo files")
    p.add_argument("--cache", metavar="DIR", help="cache folder (default: the weights cache)")
    p.add_argument("--remove-corrupt", action="store_true", help="delete files that fail")
    p.set_defaults(run=cmd_verify)

    p = sub.add_parser("convert", help="convert a weights file for resnet_backbones")
    add_convert_arguments(p)
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("export", help="export a backbone or detector to TorchScript or ONNX")
    add_export_arguments(p)
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("plot", help="draw a run's learning curve from its metrics.json")
    p.add_argument("metrics", metavar="METRICS", help="a run's OUTPUT_DIR or its metrics.json")
    p.add_argument("--out", metavar="PNG", help="default: learning_curve.png beside METRICS")
    p.add_argument("--title", default="", help="the figure's title")
    p.set_defaults(run=cmd_plot)

    # On each command, where tools/convert_weights.py (which is "convert") passes it too.
    for command in sub.choices.values():
        add_traceback_argument(command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs one command; returns its exit status (2, with one line on stderr, for a bad name,
    file, URL or download; with ``--traceback`` or ``RESNET_BACKBONES_TRACEBACK=1``, that error
    propagates instead, with its traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except (CommandError, ValueError, OSError, ImportError) as e:  # WeightsError included
        name = "" if isinstance(e, CommandError) else f"{type(e).__name__}: "
        line = f"{PROG} {args.command}: error: {name}{e}"
        return report_user_error(e, line, 2, traceback=args.traceback)
