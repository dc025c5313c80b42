"""Checks an adapter folder must pass before the engine sees it.

Each failure raises :class:`service.errors.AdapterRejected` with a reason a person can
act on. Order matters: cheap file checks first, tensor shapes last; the engine's own
load is the final check (done by the registry).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import AdapterRejected
from training.manifest import MANIFEST_FILE

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Pickle-based formats: loading them can run arbitrary code, so they are never read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# ':' is allowed for fine-tuning job models (``ft:<base>:<suffix>:<job-id>``); '/' never is.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Linear layers of Gemma/Llama-style decoders that vLLM can apply LoRA to.
SUPPORTED_TARGET_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
_LORA_KEY_RE = re.compile(
    r"layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<module>\w+)\.lora_(?P<ab>[AB])(?:\.\w+)?\.weight$"
)


@dataclass(frozen=True)
class BaseModelShape:
    """What an adapter must match: the served base's id, path and linear-layer shapes."""

    name: str
    path: Path
    num_layers: int
    # module -> (in_features, out_features)
    linear_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, name: str, path: Path) -> BaseModelShape:
        """Read the shapes from the checkpoint's ``config.json``."""
        config = json.loads((Path(path) / "config.json").read_text())
        config = config.get("text_config", config)
        hidden = config["hidden_size"]
        inter = config["intermediate_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or hidden // heads
        q, kv = heads * head_dim, kv_heads * head_dim
        shapes = {
            "q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
            "o_proj": (q, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }
        return cls(name=name, path=Path(path), num_layers=config["num_hidden_layers"],
                   linear_shapes=shapes)


@dataclass(frozen=True)
class AdapterInfo:
    """Facts read from a checked adapter folder."""

    rank: int
    alpha: float | None
    target_modules: list[str]
    base_model_name_or_path: str | None
    manifest: dict[str, Any] | None
    # How it was trained (manifest ``method``, else from ``peft_type``/``use_dora``) and
    # which engine serves it: "vllm" (LoRA) or "peft" (service/peft_engine.py).
    method: str = "lora"
    engine: str = "vllm"


def check_name(name: str, base_id: str) -> None:
    """A safe adapter name: a plain identifier (no path separators), not the base id."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise AdapterRejected(
            f"adapter name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit (no '/', no '..')",
            param="name", code="invalid_adapter_name",
        )
    if name == base_id:
        raise AdapterRejected(
            f"adapter name {name!r} is the base model's id; pick another name",
            param="name", code="invalid_adapter_name",
        )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterRejected(f"{what} {path.name} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise AdapterRejected(f"{what} {path.name} must be a JSON object")
    return data


def _check_files(folder: Path) -> None:
    if not folder.is_dir():
        raise AdapterRejected(f"adapter folder {folder} does not exist", param="path",
                              code="adapter_not_found")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise AdapterRejected(f"{folder} has no {ADAPTER_CONFIG}; is it a PEFT adapter folder?")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AdapterRejected(
                f"adapter weights are pickle files ({', '.join(pickles)}), which are never "
                f"loaded because they can run code; re-save with "
                f"`model.save_pretrained(dir, safe_serialization=True)` to get {ADAPTER_WEIGHTS}",
                code="unsafe_weights_format",
            )
        raise AdapterRejected(f"{folder} has no {ADAPTER_WEIGHTS}")


def _is_full(folder: Path, manifest: dict[str, Any] | None) -> bool:
    """A full fine-tune (a whole checkpoint): tuneserve's manifest says so, or the folder
    is a model (``config.json``) without adapter files."""
    if manifest is not None and "full" in (manifest.get("method"), manifest.get("kind")):
        return True
    return (folder / "config.json").is_file() and not (folder / ADAPTER_CONFIG).is_file()


def _check_full(folder: Path, manifest: dict[str, Any] | None, base: BaseModelShape
                ) -> AdapterInfo:
    """A full fine-tune served on the PEFT engine as its own model: safetensors weights, and
    the base's architecture and vocabulary (the prompts are the base tokenizer's)."""
    if not (folder / "config.json").is_file():
        raise AdapterRejected(f"{folder} has no config.json; a full fine-tune (method 'full') "
                              "is a whole checkpoint")
    if not list(folder.glob("*.safetensors")):
        raise AdapterRejected(f"{folder} has no *.safetensors weights (pickle weights are never "
                              "loaded)", code="unsafe_weights_format")
    _check_base({}, manifest, base)
    mine = _read_json(folder / "config.json", "model config")
    theirs = json.loads((base.path / "config.json").read_text())
    mine, theirs = mine.get("text_config", mine), theirs.get("text_config", theirs)
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if mine.get(key) != theirs.get(key):
            raise AdapterRejected(
                f"full fine-tune's {key} is {mine.get(key)}, base model {base.name!r} has "
                f"{theirs.get(key)}: it was made from another base", code="base_model_mismatch")
    return AdapterInfo(rank=0, alpha=None, target_modules=[], base_model_name_or_path=None,
                       manifest=manifest, method="full", engine="peft")


def _check_config(config: dict[str, Any], max_rank: int) -> tuple[int, list[str]]:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterRejected(
            f"{peft_type.lower() or 'unknown'} adapters (peft_type {peft_type or 'missing'}) are "
            "not supported by the engine: only LoRA adapters are served",
            code="unsupported_adapter_method",
        )
    if config.get("use_dora"):
        raise AdapterRejected("DoRA adapters (use_dora=true) are not supported by the engine; "
                              "train with use_dora=false")
    if config.get("modules_to_save"):
        raise AdapterRejected(
            f"adapters with modules_to_save ({config['modules_to_save']}) are not supported by "
            "the engine; train without modules_to_save"
        )
    ranks = [config.get("r", 8), *dict(config.get("rank_pattern") or {}).values()]
    rank = max(int(r) for r in ranks)
    if rank > max_rank:
        raise AdapterRejected(
            f"adapter rank {rank} is larger than this server's max_lora_rank {max_rank}; "
            f"restart with --max-lora-rank {rank} or more, or train a smaller rank",
            code="rank_too_large",
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise AdapterRejected(
            f"target_modules is a pattern ({targets!r}); the server needs an explicit list of "
            f"modules among {sorted(SUPPORTED_TARGET_MODULES)}"
        )
    # PEFT saves "all-linear" as full module paths (model.layers.0.self_attn.q_proj):
    # what matters is the layer kind, the last path component.
    targets = sorted({str(t).rsplit(".", 1)[-1] for t in targets or []})
    unsupported = sorted(set(targets) - SUPPORTED_TARGET_MODULES)
    if not targets or unsupported:
        raise AdapterRejected(
            f"unsupported target modules {unsupported or '(none)'}; supported: "
            f"{sorted(SUPPORTED_TARGET_MODULES)}"
        )
    return rank, targets


def _check_base(config: dict[str, Any], manifest: dict[str, Any] | None, base: BaseModelShape) -> None:
    declared: str | None = None
    if manifest is not None:
        value = manifest.get("base_model")
        declared = value.get("name") if isinstance(value, dict) else value
    if not declared:
        declared = config.get("base_model_name_or_path")
    if not declared:
        return  # nothing declared: the tensor shapes decide
    declared = str(declared)
    accepted = {base.name, base.path.name, str(base.path), str(base.path.resolve())}
    if declared not in accepted and Path(declared).name not in accepted:
        raise AdapterRejected(
            f"adapter was made for base model {declared!r}, but this server serves {base.name!r}",
            code="base_model_mismatch",
        )


def _check_shapes(weights: Path, rank: int, base: BaseModelShape) -> None:
    from safetensors import safe_open

    try:
        handle = safe_open(str(weights), framework="numpy")
    except Exception as exc:  # any parse failure means a bad file
        raise AdapterRejected(f"{weights.name} is not a readable safetensors file: {exc}") from None
    with handle as f:
        keys = list(f.keys())
        if not keys:
            raise AdapterRejected(f"{weights.name} holds no tensors")
        for key in keys:
            match = _LORA_KEY_RE.search(key)
            if match is None:
                raise AdapterRejected(f"unexpected tensor {key!r} in {weights.name}; only LoRA "
                                      "A/B weights of the base's linear layers are served")
            layer, module, ab = int(match["layer"]), match["module"], match["ab"]
            if layer >= base.num_layers or module not in base.linear_shapes:
                raise AdapterRejected(
                    f"tensor {key!r} does not exist in base model {base.name!r} "
                    f"({base.num_layers} layers): the adapter was made for another base",
                    code="base_model_mismatch",
                )
            shape = tuple(f.get_slice(key).get_shape())
            in_f, out_f = base.linear_shapes[module]
            if len(shape) != 2 or (ab == "A" and shape[1] != in_f) or (ab == "B" and shape[0] != out_f):
                raise AdapterRejected(
                    f"tensor {key!r} has shape {list(shape)}, which does not fit {module} of "
                    f"base model {base.name!r} (in {in_f}, out {out_f}): the adapter was made "
                    "for another base",
                    code="base_model_mismatch",
                )
            if max(shape[0] if ab == "A" else shape[1], 0) > rank:
                raise AdapterRejected(f"tensor {key!r} has a rank above the declared r={rank}")


def _method(config: dict[str, Any], manifest: dict[str, Any] | None) -> tuple[str, str]:
    """(method, engine): vLLM serves plain LoRA; the PEFT engine the PEFT types it knows
    (DoRA and LoRA with modules_to_save included); anything else is refused by name."""
    from service.peft_engine import SERVED_PEFT_TYPES

    peft_type = str(config.get("peft_type", "")).upper()
    method = peft_type.lower() or "missing"
    if peft_type == "LORA" and config.get("use_dora"):
        method = "dora"
    if manifest is not None and isinstance(manifest.get("method"), str):
        method = manifest["method"]  # the trainer's own name (qlora, lora_fa, ...)
    plain_lora = peft_type == "LORA" and not config.get("use_dora") \
        and not config.get("modules_to_save")
    if plain_lora and (manifest or {}).get("servable_by_vllm") is not False:
        return method, "vllm"
    if peft_type in SERVED_PEFT_TYPES:
        return method, "peft"
    raise AdapterRejected(
        f"adapters of method {method!r} (peft_type {peft_type or 'missing'}) are served by "
        f"neither engine: vLLM serves LoRA, the PEFT engine "
        f"{', '.join(sorted(t.lower() for t in SERVED_PEFT_TYPES))} and DoRA",
        code="unsupported_adapter_method",
    )


def check_adapter(folder: Path, base: BaseModelShape, max_rank: int) -> AdapterInfo:
    """Check ``folder`` can be served on ``base``; return what was read, or raise."""
    folder = Path(folder)
    manifest = _read_json(folder / MANIFEST_FILE, "manifest") if (folder / MANIFEST_FILE).is_file() else None
    if folder.is_dir() and _is_full(folder, manifest):
        return _check_full(folder, manifest, base)
    _check_files(folder)
    config = _read_json(folder / ADAPTER_CONFIG, "adapter config")
    method, engine = _method(config, manifest)
    if engine == "peft":
        # The PEFT engine's own load is the shape check (PEFT refuses mismatched tensors).
        _check_base(config, manifest, base)
        targets = config.get("target_modules")
        return AdapterInfo(
            rank=int(config.get("r") or 0), alpha=config.get("lora_alpha"),
            target_modules=sorted({str(t).rsplit(".", 1)[-1] for t in targets})
            if isinstance(targets, list) else [],
            base_model_name_or_path=config.get("base_model_name_or_path"),
            manifest=manifest, method=method, engine="peft",
        )
    rank, targets = _check_config(config, max_rank)
    _check_base(config, manifest, base)
    _check_shapes(folder / ADAPTER_WEIGHTS, rank, base)
    return AdapterInfo(
        rank=rank,
        alpha=config.get("lora_alpha"),
        target_modules=targets,
        base_model_name_or_path=config.get("base_model_name_or_path"),
        manifest=manifest,
        method=method,
    )
