"""Training config: validation with the key named, overrides, example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config, parse_overrides
from tuneserve.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_minimal_config_resolves_paths_against_the_file(tmp_path):
    config = load_config(_write(tmp_path, "name: a\ndatasets: [{path: data.jsonl}]\n"))
    assert config.datasets[0].path == str(tmp_path / "data.jsonl")
    assert config.adapter == "lora" and config.lora_target_modules == "all-linear"
    assert config.train_on_inputs is False and config.dtype == "float32"


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "name: a\ndatasets: [{path: d.jsonl}]\nlora_rank: 8\n")
    with pytest.raises(UserError, match="unknown key 'lora_rank'"):
        load_config(path)
    path = _write(tmp_path, "name: a\ndatasets: [{path: d.jsonl, kind: x}]\n")
    with pytest.raises(UserError, match="unknown key 'datasets.0.kind'"):
        load_config(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("adapter: dreambooth", "adapter"),
        ("lora_r: 0", "lora_r"),
        ("learning_rate: -1", "learning_rate"),
        ("name: 'bad name!'", "name"),
        ("datasets: []", "datasets"),
    ],
)
def test_bad_values_are_named(tmp_path, line, message):
    base = {"name": "name: a", "datasets": "datasets: [{path: d.jsonl}]"}
    key = line.split(":")[0]
    base[key] = line
    with pytest.raises(UserError, match=message):
        load_config(_write(tmp_path, "\n".join(base.values()) + "\n"))


def test_missing_and_not_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="missing required key 'name'"):
        load_config(_write(tmp_path, "datasets: [{path: d.jsonl}]\n"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [\n"))


def test_overrides_parse_yaml_scalars(tmp_path):
    assert parse_overrides(["lora_r=8", "use_dora=true", "name=x", "a.b=1.5"]) == {
        "lora_r": 8,
        "use_dora": True,
        "name": "x",
        "a": {"b": 1.5},
    }
    config = load_config(
        _write(tmp_path, "name: a\ndatasets: [{path: d.jsonl}]\n"),
        ["lora_r=8", "max_steps=3", "use_rslora=true"],
    )
    assert (config.lora_r, config.max_steps, config.use_rslora) == (8, 3, True)
    assert config.datasets[0].path == str(tmp_path / "d.jsonl")
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["novalue"])
    with pytest.raises(UserError, match="unknown key 'bogus'"):
        load_config(_write(tmp_path, "name: a\ndatasets: [{path: d.jsonl}]\n"), ["bogus=1"])


@pytest.mark.parametrize("name", ["docker-lora.yaml", "docker-qlora.yaml", "hotel-lora.yaml"])
def test_example_configs_are_valid_and_point_at_real_data(name):
    config = load_config(CONFIGS / name)
    for spec in config.datasets:
        assert Path(spec.path).exists(), spec.path
