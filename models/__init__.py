"""What a model is: Gemma 4 target and MTP drafter definitions, configs and checkpoint loading."""

from .config import DecoderConfig, DrafterConfig, ModelPair, check_pair, preset
from .drafter import Gemma4Drafter
from .errors import CheckpointError, MtpEdgeError
from .load import load_drafter, load_pair, load_target
from .target import Gemma4Target

__all__ = [
    "CheckpointError", "DecoderConfig", "DrafterConfig", "Gemma4Drafter", "Gemma4Target", "ModelPair",
    "MtpEdgeError", "check_pair", "load_drafter", "load_pair", "load_target", "preset",
]
