"""What a model is: Gemma 4 target and MTP drafter definitions, configs and checkpoint loading.

Names are imported on first use (PEP 562): `mtp_edge.models.errors` is imported by the command-line
front doors (mtp-edge and optimum-cli start-up), which must not pay for importing torch.
"""

from importlib import import_module

_SOURCES = {
    "DecoderConfig": ".config", "DrafterConfig": ".config", "ModelPair": ".config", "check_pair": ".config",
    "preset": ".config", "Gemma4Drafter": ".drafter", "CheckpointError": ".errors", "MtpEdgeError": ".errors",
    "load_drafter": ".load", "load_pair": ".load", "load_target": ".load", "Gemma4Target": ".target",
}

__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_SOURCES[name], __name__), name)
    globals()[name] = value
    return value
