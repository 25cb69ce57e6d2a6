"""Import NVIDIA's published WaveGlow checkpoints (pickled `{'model': WaveGlow}`) safely.

The pickle is read by a restricted unpickler that resolves only a fixed list of globals and
turns NVIDIA's and torch.nn's module classes into inert records, so nothing in the file runs.
"""
from __future__ import annotations

import pickle
import types
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vocoder.checkpoint import Checkpoint
from vocoder.config import FlowConfig
from vocoder.errors import CheckpointError
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig

SOURCE = "converted from NVIDIA WaveGlow"
# NVIDIA's WaveGlow hard-codes its upsampler's stride; state dicts do not record it.
NVIDIA_HOP_LENGTH = 256


class _Inert:
    """Stand-in for a pickled class: it keeps the pickled attribute dict and runs nothing else."""

    origin = ""
    state: Mapping[str, Any] = types.MappingProxyType({})
    # torch's legacy loader reads this before warning that a class's source changed.
    dump_patches = False

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"unexpected pickled state for {self.origin}")
        self.state = state

    def children(self) -> dict[str, _Inert]:
        modules = self.state.get("_modules") or {}
        return {name: module for name, module in modules.items() if isinstance(module, _Inert)}

    def child(self, name: str) -> _Inert:
        """The named submodule, or an empty record when there is none."""
        return self.children().get(name, _Inert())


def _inert_class(module: str, name: str) -> type[_Inert]:
    return type(name, (_Inert,), {"origin": f"{module}.{name}"})


def _no_backend() -> None:
    """Stands in for torch 0.4's `_get_thnn_function_backend`, which old modules pickled."""


_NVIDIA_MODULES = ("glow", "waveglow.glow", "glow_old", "waveglow.glow_old")
_MODULE_CLASSES = [(module, name) for module in _NVIDIA_MODULES for name in ("WaveGlow", "WN", "Invertible1x1Conv")]
_MODULE_CLASSES += [
    ("torch.nn.modules.conv", "Conv1d"),
    ("torch.nn.modules.conv", "ConvTranspose1d"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.utils.weight_norm", "WeightNorm"),
]
_ALLOWED: dict[tuple[str, str], Any] = {key: _inert_class(*key) for key in _MODULE_CLASSES}
_ALLOWED.update({
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins by their Python 2 module
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _no_backend,
})
# Storage types (torch.FloatStorage, ...) never reach find_class: torch.load resolves them itself.


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused to unpickle global {module}.{name} (only NVIDIA WaveGlow modules and tensors "
                "are allowed)") from None


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# The `pickle_module` handed to torch.load, so every pickle it reads goes through the whitelist.
_RESTRICTED_PICKLE = types.ModuleType("vocoder_restricted_pickle")
_RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def _read_pickle(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError("no such file")
    try:
        with warnings.catch_warnings():
            # Legacy files carry each class's source; torch warns that the inert records differ.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, TypeError, KeyError,
            IndexError, ValueError) as error:
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


def _module_tensors(module: _Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    found = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (module.state.get(group) or {}).items():
            if tensor is not None and not torch.is_tensor(tensor):
                raise CheckpointError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            if tensor is not None:
                found[prefix + name] = tensor
    for name, child in module.children().items():
        found.update(_module_tensors(child, f"{prefix}{name}."))
    return found


def _check_dilations(model: _Inert) -> None:
    """NVIDIA doubles the dilation every layer; a file that says otherwise is not this model."""
    for k, wn in enumerate(model.child("WN").children().values()):
        for i, layer in enumerate(wn.child("in_layers").children().values()):
            dilation = tuple(layer.state.get("dilation", (2**i,)))
            if dilation != (2**i,):
                raise CheckpointError(f"WN.{k}.in_layers.{i} has dilation {dilation}, expected {2**i}")


def _unpack(loaded: Any) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """NVIDIA-named tensors, hop length and extra metadata from whatever torch.load returned."""
    extra: dict[str, Any] = {}
    model = loaded
    if isinstance(loaded, Mapping):
        model = loaded.get("model", loaded.get("state_dict"))
        if isinstance(loaded.get("iteration"), int):
            extra["iteration"] = loaded["iteration"]
    if isinstance(model, _Inert):
        if not model.origin.endswith(".WaveGlow"):
            raise CheckpointError(f"the pickled model is a {model.origin}, not a WaveGlow")
        if model.origin.endswith("glow_old.WaveGlow"):
            raise CheckpointError("glow_old.WaveGlow swaps the coupling halves on odd steps, which this flow "
                                  "cannot represent; only glow.WaveGlow checkpoints (either WN layout) convert")
        _check_dilations(model)
        (stride,) = model.child("upsample").state.get("stride", (NVIDIA_HOP_LENGTH,))
        return _module_tensors(model), int(stride), extra
    if isinstance(model, Mapping) and model and all(torch.is_tensor(value) for value in model.values()):
        # A DataParallel state dict prefixes every name with "module.".
        state = {key.removeprefix("module."): value for key, value in model.items()}
        return state, NVIDIA_HOP_LENGTH, extra
    raise CheckpointError("expected {'model': WaveGlow} or a WaveGlow state dict")


def _fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each `weight_g`/`weight_v` pair by the plain `weight` it stands for."""
    folded = {}
    for name, tensor in state.items():
        base, _, suffix = name.rpartition("_")
        if suffix == "g" and f"{base}_v" in state:
            v, g = state[f"{base}_v"].double(), tensor.double()
            # The norm runs over every dim where g is broadcast (all but dim 0 in NVIDIA's setting).
            dims = [d for d in range(v.dim()) if g.dim() == 0 or g.shape[d] == 1]
            folded[base] = (v * (g / torch.linalg.vector_norm(v, dim=dims, keepdim=True))).float()
        elif not (suffix == "v" and f"{base}_g" in state):
            folded[name] = tensor.detach().float()  # detach: drops any pickled hooks
    return folded


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def _flow_config(state: dict[str, torch.Tensor], hop_length: int) -> FlowConfig:
    n_flows = _count(state, "convinv.{}.conv.weight")
    try:
        sizes = [state[f"convinv.{k}.conv.weight"].shape[0] for k in range(max(n_flows, 1))]
        drops = [k for k in range(1, n_flows) if sizes[k] != sizes[k - 1]]
        n_layers = _count(state, "WN.0.in_layers.{}.weight")
        upsample = state["upsample.weight"]
        config = FlowConfig(
            family="waveglow", n_mels=upsample.shape[0], hop_length=hop_length, n_group=sizes[0], n_flows=n_flows,
            n_early_every=drops[0] if drops else n_flows,
            # With no early outputs the size is never used; 2 keeps the config valid.
            n_early_size=sizes[0] - sizes[drops[0]] if drops else 2,
            n_layers=n_layers, n_channels=state["WN.0.start.weight"].shape[0],
            kernel_size=state["WN.0.in_layers.0.weight"].shape[2], dilation_cycle=0,
            upsample_kernel=upsample.shape[2],
        )
    except KeyError as error:
        raise CheckpointError(f"not an NVIDIA WaveGlow: no tensor {error}") from None
    except (IndexError, ValueError) as error:
        raise CheckpointError(f"unsupported WaveGlow shape: {error}") from None
    if sizes != [config.remaining_channels(k) for k in range(n_flows)]:
        raise CheckpointError(f"irregular early-output schedule (channels per step {sizes})")
    return config


def _our_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA's names to ours: square 1x1 convinv weights, per-layer cond_layers stacked into one."""
    ours: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "convinv" and parts[2:] == ["conv", "weight"]:
            ours[f"convinv.{parts[1]}.weight"] = tensor.squeeze(-1)
        elif parts[0] == "WN" and len(parts) == 5 and parts[2] == "cond_layers":
            stacked.setdefault(f"WN.{parts[1]}.cond_layer.{parts[4]}", {})[int(parts[3])] = tensor
        else:
            ours[name] = tensor
    for name, layers in stacked.items():
        if sorted(layers) != list(range(len(layers))):
            raise CheckpointError(f"{name}: cond_layers are not numbered 0..{len(layers) - 1}")
        ours[name] = torch.cat([layers[i] for i in range(len(layers))])
    return ours


def load_nvidia_waveglow(path: str | Path) -> Vocoder:
    """Read an NVIDIA WaveGlow checkpoint (`.pt`, zip or legacy format) into a CPU `Vocoder`.

    Accepts `{'model': WaveGlow, ...}` as NVIDIA's train.py saves it (new single `cond_layer`
    or old per-layer `cond_layers`, weight-normed or not) and `{'model': state_dict}`.
    """
    path = Path(path)
    try:
        tensors, hop_length, extra = _unpack(_read_pickle(path))
        state = _fold_weight_norm(tensors)
        config = _flow_config(state, hop_length)
        mel = MelConfig(n_mels=config.n_mels, hop_length=config.hop_length)
        weights = _our_names(state)
    except (CheckpointError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    metadata = {"source": SOURCE, "source_file": path.name, **extra}
    checkpoint = Checkpoint(model=config, mel=mel, state_dict=weights, metadata=metadata)
    return Vocoder.from_checkpoint(checkpoint, device="cpu", where=str(path))


def convert_nvidia_waveglow(src: str | Path, dst: str | Path) -> Path:
    """Convert NVIDIA's WaveGlow checkpoint `src` into our checkpoint directory `dst`."""
    return load_nvidia_waveglow(src).save_pretrained(dst)
