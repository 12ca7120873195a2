#!/usr/bin/env python
"""Writes the generated tables of MODEL_ZOO.md.

    python tools/generate_model_zoo.py           # rewrites the generated sections in place
    python tools/generate_model_zoo.py --check   # exits 1 if MODEL_ZOO.md is stale

Each generated section of MODEL_ZOO.md lies between the lines
``<!-- BEGIN GENERATED: NAME (tools/generate_model_zoo.py) -->`` and ``<!-- END GENERATED: NAME -->``;
everything else in the file is left as it is. The sections come from data in the repository,
never typed by hand:

* ``complexity``: docs/model_complexity.json (written by tools/model_complexity.py);
* ``weights``: the model-zoo catalog, resnet_backbones/weights/catalog.py, with the parameter
  counts measured on the built models (docs/model_complexity.json has the same counts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_ZOO = os.path.join(REPO, "MODEL_ZOO.md")
COMPLEXITY = os.path.join(REPO, "docs", "model_complexity.json")


def _section_re(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {name} \(tools/generate_model_zoo.py\) -->\n)(.*?)"
        rf"(<!-- END GENERATED: {name} -->)",
        re.S,
    )


def _m(count: int) -> str:
    return f"{count / 1e6:.2f}"


def _g(macs: int) -> str:
    return f"{macs / 1e9:.2f}"


def render_complexity(data: dict) -> str:
    from resnet_backbones.presets import PRESETS

    lines = [
        f"Counted by `tools/model_complexity.py` (fvcore): {data['convention']}. Parameters "
        "include the norms' affine weights. GMACs = 10^9 multiply-accumulates.",
        "",
        "| preset | task | params (M) | GMACs, classifier | backbone params (M) | "
        "GMACs, backbone at 800x1333 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, counts in data["presets"].items():
        c = counts["classifier"]
        h, w = c["input"]
        det = counts.get("detection_backbone")
        lines.append(
            f"| {name} | {PRESETS[name].task} | {_m(c['params'])} | {_g(c['macs'])} "
            f"({h}x{w}, {c['num_classes']} classes) | "
            + (f"{_m(det['params'])} | {_g(det['macs'])} |" if det else "- | - |")
        )
    lines += [
        "",
        "The classifier is the backbone, global average pooling and a linear layer; the "
        "detection backbone is res2..res5 as the FPN reads them (no classifier). The same counts "
        "beside the published ones (ImageNet classifier, 224x224), for each stride placement:",
        "",
        "| network | stride in the | params (M) | published params (M) | GMACs | published "
        "GMACs | published by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["published"]:
        published_params = (
            _m(row["published_params"]) if row["published_params"] is not None else "-"
        )
        lines.append(
            f"| {row['preset']} | {row['stride_in']} conv | {_m(row['params'])} | "
            f"{published_params} | {row['macs'] / 1e9:.3f} | {row['published_gmacs']} | "
            f"{row['source']} |"
        )
    lines += [
        "",
        "torchvision's figures are read from torchvision's own weight metadata "
        "(`ResNet50_Weights.IMAGENET1K_V1.meta`); the ResNet paper's are its Table 1 "
        "(multiply-adds, one decimal). A test recomputes every number here and compares.",
        "",
    ]
    return "\n".join(lines)


def _keys(config: dict) -> str:
    short = {k.replace("MODEL.RESNETS.", "").replace("MODEL.REXNET.", "REXNET."): v
             for k, v in config.items()
             if not k.startswith(("INPUT.", "MODEL.PIXEL_"))}  # fmt: skip
    return ", ".join(f"`{k}: {v}`" for k, v in short.items())


def _pixels(config: dict) -> str:
    mean, std = config["MODEL.PIXEL_MEAN"], config["MODEL.PIXEL_STD"]
    return f"{config['INPUT.FORMAT']}, mean {mean}, std {std}"


def _published_by(publisher: str, fmt: str) -> str:
    """``torchvision``, or ``FAIR (msra)`` where the publisher is not the format's library."""
    return publisher if publisher == fmt else f"{publisher} ({fmt})"


def render_weights(complexity: dict) -> str:
    from resnet_backbones.presets import ARCHS
    from resnet_backbones.weights.catalog import CATALOG, fitting_config

    lines = [
        "| `MODEL.WEIGHTS` | or from the Hugging Face Hub | published by (format) | architecture | "
        "params (M) | GMACs | top-1 % (published) | test protocol of the top-1 | SHA-256 checked | "
        "licence |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in CATALOG.items():
        counts = complexity["archs"][e.arch]
        if counts["params"] != e.num_params:
            raise ValueError(f"{name}: the catalog's {e.num_params} parameters are not the model's")
        top1 = f"{e.top1:g}" if e.top1 is not None else "not published"
        digest = (
            f"`{e.sha256[:12]}...`"
            if e.sha256
            else f"prefix `{e.sha256_prefix}`"
            if e.sha256_prefix
            else "none published"
        )
        licence = ("**non-commercial**: " if e.non_commercial else "") + e.license
        hub = f"`hf-hub:{e.hf_hub_id}`" if e.hf_hub_id else "-"
        if e.hf_hub_id and e.hf_hub_revision:
            hub = f"`hf-hub:{e.hf_hub_id}@{e.hf_hub_revision}`"
        lines.append(
            f"| `resnet_backbones://{name}` | {hub} | {_published_by(e.published_by, e.source)} | "
            f"`{e.arch}` | {_m(counts['params'])} | "
            f"{_g(counts['macs'])} | {top1} | {e.test_protocol} | {digest} | {licence} |"
        )
    lines += [
        "",
        "Parameters and GMACs are our counts of the ImageNet classifier each file fills (224x224, "
        "1000 classes; docs/model_complexity.json); a test checks that they equal the catalog's "
        "count: torchvision's and timm's published ones, and for detectron2's files (whose "
        "publisher gives none) torchvision's count of the same architecture. The Hub repositories "
        "are those that timm's pretrained configs give for the same `name.tag`; none of them was "
        "fetched here. No revision is pinned, so their default branch is fetched (name a commit "
        "with `@REVISION` to pin one), and the SHA-256 column applies to the "
        "`resnet_backbones://` files only (the Hub's are other files). Where the top-1 and "
        "the licence come from:",
        "",
    ]
    lines += [
        f"- `{name}`: top-1: {e.top1_source}; licence: {e.license_source}"
        for name, e in CATALOG.items()
    ]
    lines += [
        "",
        "The config keys that build each architecture and feed it as its weights were trained "
        "(`tools/convert_weights.py` writes the same keys into a complete YAML config; the checkpointer "
        "refuses a config whose input format, pixel statistics or stride placement contradicts "
        "them):",
        "",
        "| architecture | publisher | input | keys |",
        "| --- | --- | --- | --- |",
    ]
    for name, arch in ARCHS.items():
        config = fitting_config(name)
        publisher = _published_by(arch.published_by, arch.source)
        lines.append(f"| `{name}` | {publisher} | {_pixels(config)} | {_keys(config)} |")
    lines.append("")
    return "\n".join(lines)


def sections() -> dict[str, Callable[[], str]]:
    def load() -> dict:
        with open(COMPLEXITY, encoding="utf-8") as f:
            return json.load(f)

    return {
        "weights": lambda: render_weights(load()),
        "complexity": lambda: render_complexity(load()),
    }


def generate(text: str) -> str:
    """``text`` (MODEL_ZOO.md) with every generated section rewritten."""
    for name, render in sections().items():
        pattern = _section_re(name)
        if not pattern.search(text):
            raise ValueError(
                f"MODEL_ZOO.md has no generated section {name!r}: add the lines "
                f"'<!-- BEGIN GENERATED: {name} (tools/generate_model_zoo.py) -->' and "
                f"'<!-- END GENERATED: {name} -->'"
            )
        body = render()
        text = pattern.sub(lambda m, body=body: m[1] + body + m[3], text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if MODEL_ZOO.md is stale")
    parser.add_argument("--path", default=MODEL_ZOO, help="the file (default: %(default)s)")
    args = parser.parse_args(argv)

    sys.path.insert(0, REPO)
    import resnet_backbones  # noqa: F401  (registers everything; before detectron2)

    with open(args.path, encoding="utf-8") as f:
        current = f.read()
    fresh = generate(current)
    if args.check:
        if fresh != current:
            print(
                f"{args.path} is stale: run `python tools/generate_model_zoo.py`", file=sys.stderr
            )
            return 1
        print(f"{args.path} is up to date")
        return 0
    if fresh != current:
        with open(args.path, "w", encoding="utf-8") as f:
            f.write(fresh)
        print(f"Rewrote the generated sections of {args.path}")
    else:
        print(f"{args.path} was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
