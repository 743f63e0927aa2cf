"""Write vitkit/pretrained_tags.json: timm's pretrained configurations of the models vitkit registers.

vitkit keeps timm's model names and state-dict keys, so the weights timm publishes on the Hugging Face
Hub (`timm/<name>.<tag>`) load into vitkit's model of the same name. This script reads the installed
timm's registry (`timm.list_pretrained()`, `timm.models.get_pretrained_cfg`) and stores, for every
registered vitkit name that timm also knows, its tags in timm's order and timm's default tag
with their preprocessing and weight locations, and the ImageNet-1k class names (timm's
`ImageNetInfo` descriptions) that the 1000-class tags use. vitkit reads the table at run time and never imports
timm. Run it after a timm upgrade or after registering a new timm-named model:

    python scripts/gen_pretrained_tags.py            # rewrite the table
    python scripts/gen_pretrained_tags.py --check    # exit 1 if the table differs from installed timm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vitkit" / "pretrained_tags.json"

# timm pretrained_cfg fields kept (in this order); None, empty and False-by-default values are dropped.
FIELDS = ("hf_hub_id", "url", "architecture", "tag", "custom_load", "input_size", "test_input_size",
          "min_input_size", "fixed_input_size", "interpolation", "crop_pct", "test_crop_pct", "crop_mode",
          "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "license", "origin_url",
          "paper_ids")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _cfg(cfg) -> dict:
    d = cfg.to_dict()
    out = {}
    for key in FIELDS:
        value = d.get(key)
        if value is None or value == "" or value == () or (key == "custom_load" and value is False):
            continue
        out[key] = _plain(value)
    out.setdefault("pool_size", None)  # timm's ViTs: no final feature map
    return out


def build_table() -> dict:
    sys.path.insert(0, str(ROOT))
    from vitkit.compat import make_torchvision_importable

    make_torchvision_importable()
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset
    from timm.models import get_pretrained_cfg, is_model
    from timm.models._registry import get_arch_pretrained_cfgs

    import vitkit

    pretrained = set(timm.list_pretrained())
    models: dict[str, dict] = {}
    for name in vitkit.list_models():
        if not is_model(name):
            continue
        tags = {}
        for full, cfg in get_arch_pretrained_cfgs(name).items():  # timm's registration order
            arch, _, tag = full.partition(".")
            if full in pretrained and tag:
                tags[tag] = _cfg(cfg)
                if infer_imagenet_subset(cfg) == "imagenet-1k":  # class names: timm's ImageNetInfo
                    tags[tag]["label_set"] = "imagenet-1k"
        default = get_pretrained_cfg(name)
        entry: dict = {"default_tag": default.tag if default is not None and default.tag in tags else None,
                       "tags": tags}
        if not tags:  # timm knows the architecture but publishes no weights: keep its preprocessing
            base = get_pretrained_cfg(name)
            if base is not None:
                cfg = _cfg(base)
                entry["untrained"] = cfg
        models[name] = entry
    label_sets = {"imagenet-1k": ImageNetInfo("imagenet-1k").label_descriptions()}
    return {"timm_version": timm.__version__, "generated_by": "scripts/gen_pretrained_tags.py", "models": models,
            "label_sets": label_sets}


def _dump(table: dict) -> str:
    """JSON with one line per tag, so that a timm upgrade shows as a readable diff."""
    lines = ["{", f' "timm_version": {json.dumps(table["timm_version"])},',
             f' "generated_by": {json.dumps(table["generated_by"])},', ' "models": {']
    names = list(table["models"])
    for i, name in enumerate(names):
        entry = table["models"][name]
        lines.append(f"  {json.dumps(name)}: {{")
        lines.append(f'   "default_tag": {json.dumps(entry["default_tag"])},')
        if "untrained" in entry:
            lines.append(f'   "untrained": {json.dumps(entry["untrained"])},')
        tags = list(entry["tags"].items())
        lines.append('   "tags": {' + ("" if tags else "}"))
        for j, (tag, cfg) in enumerate(tags):
            lines.append(f"    {json.dumps(tag)}: {json.dumps(cfg)}" + ("," if j < len(tags) - 1 else ""))
        if tags:
            lines.append("   }")
        lines.append("  }" + ("," if i < len(names) - 1 else ""))
    lines.append(" },")
    lines.append(' "label_sets": {')
    sets = list(table["label_sets"].items())
    for i, (key, names) in enumerate(sets):
        lines.append(f"  {json.dumps(key)}: [")
        lines += [f"   {json.dumps(n)}" + ("," if j < len(names) - 1 else "") for j, n in enumerate(names)]
        lines.append("  ]" + ("," if i < len(sets) - 1 else ""))
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the table on disk instead of writing it")
    args = p.parse_args()
    table = build_table()
    text = _dump(table)
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        on_disk = json.loads(current or "{}")
        if (on_disk.get("models"), on_disk.get("label_sets")) != (table["models"], table["label_sets"]):
            print(f"{OUT} differs from timm {table['timm_version']}: run python scripts/gen_pretrained_tags.py",
                  file=sys.stderr)
            return 1
        print(f"{OUT} matches timm {table['timm_version']}")
        return 0
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    n_tags = sum(len(e["tags"]) for e in table["models"].values())
    print(f"wrote {OUT}: {len(table['models'])} models, {n_tags} tags (timm {table['timm_version']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
