"""pocketvlm runtime: runs exported bundles with numpy, onnxruntime, pillow and tokenizers only (never torch)."""

from pocketvlm.runtime.dual_encoder import DualEncoder, Prediction
from pocketvlm.runtime.errors import PocketVLMError
from pocketvlm.runtime.manifest import SCHEMA_VERSION, Bundle, load_bundle

__version__ = "0.1.0"
__all__ = ["SCHEMA_VERSION", "Bundle", "DualEncoder", "PocketVLMError", "Prediction", "__version__", "load_bundle"]
