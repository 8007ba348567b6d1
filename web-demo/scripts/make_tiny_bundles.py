"""Export tiny random-weight bundles of families the demo models do not cover (test fixtures for the web engine).

Usage: python web-demo/scripts/make_tiny_bundles.py OUT_DIR [family ...]   (default: qwen2_vl idefics3 siglip clip)
Each bundle lands in OUT_DIR/<family>-fp32, exported through `pocketvlm export` exactly like a user's checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pocketvlm.export.synthetic import build_checkpoint

# initializer_range 0.5 makes a random decoder emit varied tokens, so greedy-id equality means something
OPTIONS = {"qwen2_vl": {"initializer_range": 0.5}, "idefics3": {"initializer_range": 0.5}}


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    families = sys.argv[2:] or ["qwen2_vl", "idefics3", "siglip", "clip"]
    for family in families:
        bundle = out / f"{family}-fp32"
        if (bundle / "manifest.json").is_file():
            print(f"exists: {bundle}")
            continue
        checkpoint = build_checkpoint(family, out / f"ckpt-{family}", seed=0, **OPTIONS.get(family, {}))
        subprocess.run([sys.executable, "-m", "pocketvlm.cli.main", "export", "--model", str(checkpoint),
                        "--out", str(bundle)], check=True)
        print(f"exported: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
