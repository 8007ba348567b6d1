"""Core ML conversion and compression jobs in their own Python processes (``isolate``): the parent holds no torch
weights while coremltools converts, the peak memory of a large model's export is one component's, and a crash in
coremltools (or the kernel's OOM killer) cannot take the parent's staging directories with it. Typed errors come back
to the parent as the same typed errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pocketvlm.export.families.vision_split import component_def
from pocketvlm.export.hf_quiet import quiet_transformers
from pocketvlm.export.quant.config import QuantSpec
from pocketvlm.export.registry import get_family
from pocketvlm.export.targets.coreml.common import DEFAULT_TARGET
from pocketvlm.export.targets.coreml.compress import compress_package
from pocketvlm.export.targets.coreml.convert import convert_component
from pocketvlm.export.targets.coreml.decoder import convert_decoder, without_broken_state_pass
from pocketvlm.runtime.errors import ExportError, PocketVLMError


def _convert_in_child(job: Path) -> int:
    """Child-process entry: convert the component described by ``job`` (JSON beside an .npz of feeds)."""
    import torch

    spec = json.loads(job.read_text(encoding="utf-8"))
    try:
        if spec.get("compress"):
            task = spec["compress"]
            with without_broken_state_pass():
                done = compress_package(Path(task["source"]), Path(task["target"]), QuantSpec(**task["spec"]))
            job.with_suffix(".done").write_text(json.dumps(done), encoding="utf-8")
            return 0
        family = get_family(spec["family"])
        with quiet_transformers():
            model = family.load_model(Path(spec["checkpoint"]))
        comp = component_def(family, spec["component"])  # a split stage (--split-vision) too
        if spec.get("decoder"):
            convert_decoder(model, comp, Path(spec["path"]), spec["decoder"]["prefill_length"],
                            spec["decoder"]["capacity"], spec["deployment_target"])
            return 0
        with np.load(job.with_suffix(".npz")) as data:
            feeds = {k: torch.from_numpy(data[k]) for k in data.files}
        convert_component(model, comp, Path(spec["path"]), feeds, spec["deployment_target"])
    except PocketVLMError as exc:
        job.with_suffix(".error").write_text(json.dumps({"problem": exc.problem, "fix": exc.fix}), encoding="utf-8")
        return 2
    return 0


def compress_isolated(source: Path, target: Path, spec: QuantSpec) -> dict[str, Any]:
    """``compress_package`` in a fresh process: coremltools holds the whole program and its quantized copies while
    it compresses, and a long-lived parent would keep that memory after each component."""
    return _run_child({"compress": {"source": str(source), "target": str(target), "spec": asdict(spec)}}, {},
                      target.name)


def convert_isolated(checkpoint_dir: Path, family_name: str, component: str, path: Path,
                     feeds: dict[str, Any], deployment_target: str = DEFAULT_TARGET,
                     decoder: dict[str, int] | None = None) -> None:
    """``convert_component`` (or, with ``decoder`` = {prefill_length, capacity}, ``coreml_decoder.convert_decoder``
    into the directory ``path``) in a fresh Python process that loads the checkpoint itself, so the parent holds no
    torch weights while coremltools converts (errors come back as the same typed errors)."""
    _run_child({"checkpoint": str(checkpoint_dir), "family": family_name, "component": component, "path": str(path),
                "deployment_target": deployment_target, "decoder": decoder}, feeds, component)


def _run_child(job_spec: dict[str, Any], feeds: dict[str, Any], what: str) -> dict[str, Any]:
    """Run one conversion or compression job in ``python -m pocketvlm.export.targets.coreml.isolate``; typed errors
    come back as raised, a crash (e.g. the kernel's OOM killer) as an ExportError naming the job."""
    with tempfile.TemporaryDirectory(prefix="pocketvlm-coreml-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps(job_spec), encoding="utf-8")
        np.savez(job.with_suffix(".npz"), **{k: v.numpy() if hasattr(v, "numpy") else np.asarray(v)
                                             for k, v in feeds.items()})
        result = subprocess.run([sys.executable, "-m", "pocketvlm.export.targets.coreml.isolate", str(job)],
                                capture_output=True, text=True)
        if job.with_suffix(".error").is_file():
            error = json.loads(job.with_suffix(".error").read_text(encoding="utf-8"))
            raise ExportError(error["problem"], error["fix"])
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise ExportError(f"the Core ML process for {what} died (exit {result.returncode}): "
                              f"{lines[-1][:300] if lines else 'no message'}",
                              "check free memory; re-run with --progress to see which component")
        done = job.with_suffix(".done")
        return json.loads(done.read_text(encoding="utf-8")) if done.is_file() else {}


if __name__ == "__main__":
    sys.exit(_convert_in_child(Path(sys.argv[1])))
