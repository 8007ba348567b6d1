"""A copy of a bundle whose golden record (the exporter's own golden.json) has one stage edited and re-hashed, so a
test can check that a self-test FAILs naming that stage. The model files are symlinked, never written. Usage:
    python web-demo/scripts/tamper_golden.py --bundle SRC --out DST --stage STAGE
STAGE: preprocess, vision_encoder / image_encoder, prompt / text, text_decoder, text_encoder, generation, scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pocketvlm.runtime.manifest import load_bundle


def tamper(stages: list[dict[str, Any]], name: str) -> None:
    stage = next((s for s in stages if s["name"] == name), None)
    if stage is None:
        raise SystemExit(f"the record has no stage {name!r} (it has {', '.join(s['name'] for s in stages)})")
    if "tensors" in stage:
        for tensor in stage["tensors"].values():
            if "samples" in tensor:
                tensor["samples"]["value"] = [v + 0.5 + abs(v) for v in tensor["samples"]["value"]]
            else:
                tensor["values"] = [v + 1 for v in tensor["values"]]
    elif name == "text_decoder":
        for step in stage["steps"]:
            step["top_k"] = [[i, v * 1.5 + 1.0] for i, v in step["top_k"]]
    elif name == "generation":
        stage["token_ids"] = [t + 1 for t in stage["token_ids"]]
    elif name == "scores":
        stage["probabilities"] = [[1 - p for p in row] for row in stage["probabilities"]]
    elif name in ("prompt", "text"):
        stage["input_ids"] = [[i + 1 for i in r] if isinstance(r, list) else r + 1 for r in stage["input_ids"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stage", required=True)
    args = parser.parse_args()
    manifest = dict(load_bundle(args.bundle).manifest)
    if "golden" not in manifest:
        raise SystemExit(f"{args.bundle} carries no golden record: re-export it with pocketvlm export")
    name = manifest["golden"]["file"]
    record = json.loads((args.bundle / name).read_text())
    tamper(record["stages"], args.stage)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for entry in manifest["files"]:
        if entry["path"] != name:
            (args.out / entry["path"]).symlink_to((args.bundle / entry["path"]).resolve())
    data = json.dumps(record).encode()
    (args.out / name).write_bytes(data)
    manifest["files"] = [dict(e, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)) if e["path"] == name
                         else e for e in manifest["files"]]
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
