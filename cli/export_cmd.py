"""pocketvlm export --model DIR --target onnx|tflite|coreml|qnn|executorch --quant int8 --out DIR [--shapes shapes.json]
[--soc SM8650,SM8750] [--calibration-images DIR] [--calibration-texts FILE] [--mediapipe [--mediapipe-scale N]]"""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketvlm.runtime.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    required = parser.add_argument_group("required")
    required.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    required.add_argument("--out", required=True, help="bundle directory to write (an existing bundle is replaced)")
    optional = parser.add_argument_group("optional")
    optional.add_argument("--target", default="onnx", choices=("onnx", "tflite", "coreml", "qnn", "executorch"),
                          help="onnx (default), tflite, coreml, qnn (Qualcomm HTP, needs pocketvlm[npu]), or "
                          "executorch (XNNPACK .pte, needs pocketvlm[executorch])")
    optional.add_argument("--quant", default=None,
                          help="fp32 | fp16 | int8 | int4 | palette4 (coreml), per component as "
                          "'int8,text_encoder=int4', or a JSON file; a16w8 | a8w8 (qnn); default fp32 (fp16 for "
                          "coreml and qnn)")
    optional.add_argument("--deployment-target", default="iOS18", help="coreml: iOS16 | iOS17 | iOS18 (default)")
    optional.add_argument("--split-vision", action="store_true",
                          help="export the image / vision side as two stages at the ViT -> Transformer boundary "
                          "(image_frontend + image_transformer for CLIP/SigLIP, vision_frontend + vision_transformer "
                          "for the VLMs)")
    optional.add_argument("--shapes", help="tflite, coreml, executorch: JSON file of static shapes (prefill_length, "
                          "kv_capacity, image_size); defaults 128, 1024, 448")
    optional.add_argument("--soc", default="SM8650",
                          help="qnn: Snapdragon part number(s) to compile for, comma-separated (default SM8650)")
    optional.add_argument("--calibration-images", type=Path, default=None,
                          help="qnn a16w8/a8w8: a directory of representative images (32+) for activation ranges")
    optional.add_argument("--calibration-texts", type=Path, default=None,
                          help="qnn a16w8/a8w8 text encoders: a file of prompts, one per line")
    optional.add_argument("--mediapipe", nargs="?", const="image_encoder", default=None, metavar="COMPONENT",
                          help="tflite, CLIP / SigLIP: also write image_encoder.mediapipe.tflite for MediaPipe Tasks' "
                          "ImageEmbedder (NHWC [0, 1] input, normalisation in the graph, TFLite metadata)")
    optional.add_argument("--mediapipe-scale", type=int, default=None, metavar="N",
                          help="the MediaPipe variant's input as N x the tower's size, resized in the graph with "
                          "antialiasing (default 8, below 1024 px; 1: MediaPipe's bilinear resize only)")
    optional.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")


def run(args: argparse.Namespace) -> int:
    from pocketvlm.cli.main import Progress
    from pocketvlm.export.loop import export_bundle
    from pocketvlm.export.quant.config import QuantConfig
    from pocketvlm.export.static_shapes import StaticShapes
    from pocketvlm.runtime.manifest import load_bundle
    from pocketvlm.runtime.qnn import parse_socs

    quant = QuantConfig.parse(args.quant or ("fp16" if args.target in ("coreml", "qnn") else "fp32"))
    extra = {}
    if args.target == "qnn":
        extra = {"socs": tuple(s.name for s in parse_socs(args.soc)),
                 "calibration_images": calibration_images(args.calibration_images),
                 "calibration_texts": calibration_texts(args.calibration_texts)}
    if args.mediapipe_scale is not None and args.mediapipe is None:
        raise InputError("--mediapipe-scale without --mediapipe", "add --mediapipe, or drop --mediapipe-scale")
    if args.mediapipe is not None:
        extra.update(mediapipe=tuple(name.strip() for name in args.mediapipe.split(",")),
                     mediapipe_scale=args.mediapipe_scale)
    out = export_bundle(args.model, args.out, target=args.target, quant=quant, progress=Progress(args.progress),
                        split_vision=args.split_vision, shapes=StaticShapes.load(args.shapes),
                        deployment_target=args.deployment_target, **extra)
    bundle = load_bundle(out)
    parts = ", ".join(f"{name} {spec.bytes / 1e6:.2f} MB ({spec.quantization['method']})"
                      for name, spec in bundle.components.items())
    variants = "".join(f"; MediaPipe {record['task']}: {record['file']} {record['bytes'] / 1e6:.2f} MB"
                       for record in (c.get("mediapipe") for c in bundle.manifest["components"].values()) if record)
    print(f"exported {bundle.family} to {out}: {parts}{variants}; total {bundle.total_bytes / 1e6:.2f} MB")
    return 0


def calibration_images(folder: Path | None) -> tuple[Path, ...]:
    if folder is None:
        return ()
    if not folder.is_dir():
        raise InputError(f"--calibration-images {folder} is not a directory", "pass a folder of images")
    images = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if not images:
        raise InputError(f"--calibration-images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files",
                         "pass a folder of representative images (32 or more)")
    return images


def calibration_texts(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --calibration-texts {path}: {exc}", "pass a UTF-8 text file") from exc
    if not lines:
        raise InputError(f"--calibration-texts {path} is empty", "write one prompt per line")
    return lines
