"""pocketvlm export --model DIR --target onnx|tflite|coreml --quant int8 --out DIR [--shapes shapes.json]"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    required.add_argument("--out", required=True, help="bundle directory to write (an existing bundle is replaced)")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--target", default="onnx", choices=("onnx", "tflite", "coreml"),
                          help="onnx (default), tflite or coreml")
    optional.add_argument("--quant", default=None,
                          help="fp32 | fp16 | int8 | int4 | palette4 (coreml), per component as "
                          "'int8,text_encoder=int4', or a JSON file; default fp32 (fp16 for coreml)")
    optional.add_argument("--deployment-target", default="iOS18", help="coreml: iOS16 | iOS17 | iOS18 (default)")
    optional.add_argument("--split-vision", action="store_true",
                          help="VLMs: export the vision side as vision_frontend + vision_transformer")
    optional.add_argument("--shapes", help="tflite, coreml: JSON file of static shapes (prefill_length, kv_capacity, "
                          "image_size); defaults 128, 1024, 448")
    optional.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")


def run(args: argparse.Namespace) -> int:
    from pocketvlm.cli.main import Progress
    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.quant.config import QuantConfig
    from pocketvlm.export.static_shapes import StaticShapes
    from pocketvlm.runtime.manifest import load_bundle

    quant = QuantConfig.parse(args.quant or ("fp16" if args.target == "coreml" else "fp32"))
    out = export_bundle(args.model, args.out, target=args.target, quant=quant, progress=Progress(args.progress),
                        split_vision=args.split_vision, shapes=StaticShapes.load(args.shapes),
                        deployment_target=args.deployment_target)
    bundle = load_bundle(out)
    parts = ", ".join(f"{name} {spec.bytes / 1e6:.2f} MB ({spec.quantization['method']})"
                      for name, spec in bundle.components.items())
    print(f"exported {bundle.family} to {out}: {parts}; total {bundle.total_bytes / 1e6:.2f} MB")
    return 0
