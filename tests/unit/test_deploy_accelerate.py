"""training/accelerate/*.yaml: every shipped launcher config goes through accelerate's own
``accelerate launch`` argument handling (the same calls ``launch_command`` makes before it
spawns workers), and the environment the workers would get says what the file intends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "training" / "accelerate"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
TRAIN_ARGS = ["-m", "tuneserve.cli", "train", "config.yaml"]


def _launch_args(config: Path, processes: int):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args(
        ["--config_file", str(config), "--num_processes", str(processes), *TRAIN_ARGS]
    )
    args, defaults, mixed_from_config = _validate_launch_command(parsed)
    return args, defaults, mixed_from_config


def test_the_expected_configs_ship() -> None:
    names = {p.name for p in CONFIGS}
    assert {"cpu.yaml", "fsdp.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_accelerate_accepts_the_config(config: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))  # accelerate's own loader (rejects bad keys)
    raw = yaml.safe_load(config.read_text())
    assert loaded.distributed_type.value == raw["distributed_type"]
    processes = 1 if raw["distributed_type"] == "NO" else 4
    args, _, _ = _launch_args(config, processes)
    assert args.module and args.training_script == "tuneserve.cli"
    assert args.training_script_args == TRAIN_ARGS[2:]


def test_fsdp_config_gives_the_workers_the_intended_fsdp_setup() -> None:
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _launch_args(CONFIG_DIR / "fsdp.yaml", 4)
    assert args.use_fsdp and args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    # LoRA mixes frozen and trainable parameters inside one wrapped layer.
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"
    # The wrapped class must exist in the installed transformers, or FSDP wraps nothing.
    import transformers.models.gemma3.modeling_gemma3 as gemma3

    for name in env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(","):
        assert hasattr(gemma3, name), name


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_give_the_workers_their_zero_stage(stage: int) -> None:
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_from_config = _launch_args(
        CONFIG_DIR / f"deepspeed-zero{stage}.yaml", 4
    )
    assert args.use_deepspeed
    # What launch_command sets before it calls the DeepSpeed launcher.
    fields = list(defaults.deepspeed_config)
    if mixed_from_config:
        fields.append("mixed_precision")
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    if stage == 3:
        # The adapter is gathered from the shards when saved: a plain PEFT adapter results.
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_accelerate_rejects_a_misspelt_key(tmp_path: Path) -> None:
    """The loader used above is strict at the top level..."""
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIG_DIR / "fsdp.yaml").read_text().replace("num_machines:", "num_machine:"))
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(bad))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_nested_keys_are_launcher_options(config: Path) -> None:
    """...but copies fsdp_config / deepspeed_config keys onto the launcher's options without
    checking them, so a typo there would be silently ignored: check them against the
    options `accelerate launch` really has."""
    from accelerate.commands.launch import launch_command_parser

    known = vars(launch_command_parser().parse_args(TRAIN_ARGS))
    raw = yaml.safe_load(config.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            option = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
            assert option in known, f"{config.name}: {section}.{key} is not a launch option"
