"""Adapter checks, registry persistence, archive extraction and the folder watcher, on
real PEFT adapters of the tiny model (fast). The real-engine versions are in
tests/integration/test_service_adapters.py."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from service.adapters.archive import extract_archive
from service.adapters.checks import BaseModelShape, check_adapter, check_name
from service.adapters.registry import AdapterRegistry
from service.adapters.watcher import AdapterDirWatcher
from service.errors import AdapterRejected, NotFound
from service.settings import Settings
from tests.unit.service_fake_engine import FakeEngine
from tests.unit.service_lora import make_lora_adapter


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    return make_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("tiny-adapter") / "a")


@pytest.fixture
def base(tiny_model_dir) -> BaseModelShape:
    return BaseModelShape.from_checkpoint("tiny", tiny_model_dir)


@pytest.fixture
def adapter_copy(tiny_adapter, tmp_path):
    def copy(name="copy", config_changes=None) -> Path:
        dest = tmp_path / name
        shutil.copytree(tiny_adapter, dest)
        if config_changes:
            config = json.loads((dest / "adapter_config.json").read_text())
            config.update(config_changes)
            (dest / "adapter_config.json").write_text(json.dumps(config))
        return dest

    return copy


def _other_base(tmp_path: Path) -> BaseModelShape:
    """A base with the real Gemma 270M's shapes, without loading it."""
    config = {"hidden_size": 640, "intermediate_size": 2048, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 256, "num_hidden_layers": 18}
    folder = tmp_path / "gemma-3-270m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return BaseModelShape.from_checkpoint("gemma-3-270m", folder)


def test_fine_tuning_style_names_allowed():
    check_name("ft:tiny:docker:ftjob-0123456789abcdef", "base")


def test_good_adapter_passes(tiny_adapter, base):
    info = check_adapter(tiny_adapter, base, max_rank=16)
    assert info.rank == 8
    assert info.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "x" * 129, "a b",
                                  "tiny", "/etc/passwd", "a\\b", "nul\x00"])
def test_unsafe_or_clashing_names_rejected(name):
    with pytest.raises(AdapterRejected) as exc:
        check_name(name, "tiny")
    assert exc.value.code == "invalid_adapter_name"


def test_full_module_path_targets_accepted(adapter_copy, base):
    # What PEFT writes for target_modules="all-linear".
    paths = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "k_proj")]
    info = check_adapter(adapter_copy(config_changes={"target_modules": paths}), base, 16)
    assert info.target_modules == ["k_proj", "q_proj"]


def test_pickle_only_adapter_rejected(adapter_copy, base):
    folder = adapter_copy()
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterRejected) as exc:
        check_adapter(folder, base, 16)
    assert exc.value.code == "unsafe_weights_format"
    assert "safe_serialization=True" in exc.value.message


def test_rank_above_limit_rejected(adapter_copy, base):
    with pytest.raises(AdapterRejected) as exc:
        check_adapter(adapter_copy(), base, max_rank=1)
    assert exc.value.code == "rank_too_large" and "--max-lora-rank 8" in exc.value.message


@pytest.mark.parametrize("changes, reason", [
    ({"target_modules": ["q_proj", "embed_tokens"]}, "unsupported target modules"),
    ({"target_modules": "all-linear"}, "pattern"),
    ({"peft_type": "LOHA"}, "method 'loha' .* served by neither engine"),
])
def test_unsupported_configs_rejected(adapter_copy, base, changes, reason):
    with pytest.raises(AdapterRejected, match=reason):
        check_adapter(adapter_copy(config_changes=changes), base, 16)


@pytest.mark.parametrize("changes, method", [
    ({"use_dora": True}, "dora"),
    ({"modules_to_save": ["lm_head"]}, "lora"),
    ({"peft_type": "IA3"}, "ia3"),
])
def test_what_vllm_cannot_serve_goes_to_the_peft_engine(adapter_copy, base, changes, method):
    info = check_adapter(adapter_copy(config_changes=changes), base, 16)
    assert (info.method, info.engine) == (method, "peft")
    assert (check_adapter(adapter_copy("plain"), base, 16).engine) == "vllm"


def test_manifest_method_is_the_method_shown(adapter_copy, base):
    folder = adapter_copy()
    (folder / "tuneserve.json").write_text(json.dumps({"method": "lora_fa"}))
    assert (check_adapter(folder, base, 16).method, check_adapter(folder, base, 16).engine) \
        == ("lora_fa", "vllm")


def test_manifest_method_routes_and_a_full_fine_tune_needs_a_checkpoint(adapter_copy, base):
    """What tuneserve trained is routed by its manifest (servable_by_vllm false → the PEFT
    engine); a full fine-tune is checked as a whole checkpoint (it has no adapter files)."""
    folder = adapter_copy()
    (folder / "tuneserve.json").write_text(json.dumps(
        {"base_model": "tiny", "method": "dora", "servable_by_vllm": False}))
    info = check_adapter(folder, base, 16)
    assert (info.method, info.engine) == ("dora", "peft")
    (folder / "adapter_config.json").unlink()
    (folder / "tuneserve.json").write_text(json.dumps(
        {"base_model": "tiny", "kind": "full", "method": "full", "servable_by_vllm": False}))
    with pytest.raises(AdapterRejected, match="no config.json; a full fine-tune \\(method 'full'"):
        check_adapter(folder, base, 16)


def test_full_fine_tune_goes_to_the_peft_engine_on_its_base_only(tiny_model_dir, base, tmp_path):
    folder = tmp_path / "full"
    shutil.copytree(tiny_model_dir, folder)
    info = check_adapter(folder, base, 16)
    assert (info.method, info.engine) == ("full", "peft")
    config = json.loads((folder / "config.json").read_text())
    config.get("text_config", config)["vocab_size"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterRejected, match="vocab_size") as exc:
        check_adapter(folder, base, 16)
    assert exc.value.code == "base_model_mismatch"
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(AdapterRejected, match="safetensors"):
        check_adapter(folder, base, 16)


def test_adapter_of_another_base_rejected_by_declared_base(tiny_adapter, tmp_path):
    with pytest.raises(AdapterRejected) as exc:
        check_adapter(tiny_adapter, _other_base(tmp_path), 16)
    assert exc.value.code == "base_model_mismatch"


def test_adapter_of_another_base_rejected_by_shapes(adapter_copy, tmp_path):
    # No declared base: the tensor shapes alone must catch it.
    folder = adapter_copy(config_changes={"base_model_name_or_path": None})
    with pytest.raises(AdapterRejected, match="shape") as exc:
        check_adapter(folder, _other_base(tmp_path), 16)
    assert exc.value.code == "base_model_mismatch"


def test_manifest_base_model_checked(adapter_copy, base):
    folder = adapter_copy()
    (folder / "tuneserve.json").write_text(json.dumps({"base_model": "some-other-model"}))
    with pytest.raises(AdapterRejected, match="some-other-model"):
        check_adapter(folder, base, 16)
    (folder / "tuneserve.json").write_text(json.dumps({"base_model": "tiny"}))
    assert check_adapter(folder, base, 16).manifest == {"base_model": "tiny"}


def test_missing_or_corrupt_files_rejected(adapter_copy, base, tmp_path):
    with pytest.raises(AdapterRejected, match="does not exist"):
        check_adapter(tmp_path / "nothing", base, 16)
    folder = adapter_copy()
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterRejected, match="safetensors"):
        check_adapter(folder, base, 16)
    (folder / "adapter_config.json").write_text("{broken")
    with pytest.raises(AdapterRejected, match="not valid JSON"):
        check_adapter(folder, base, 16)


# -- registry ------------------------------------------------------------------------------
@pytest.fixture
def engine(tiny_model_dir):
    return FakeEngine(model_path=tiny_model_dir, tokenizer=None)


async def test_registry_add_list_remove_and_restore(tmp_path, engine, base, adapter_copy):
    db = tmp_path / "registry.sqlite"
    registry = AdapterRegistry(db, engine, base, 16)
    record = await registry.add("a1", adapter_copy("a1"), source="api")
    assert record.rank == 8 and record.base_model == "tiny"
    assert [r.name for r in registry.list()] == ["a1"] and "a1" in engine.adapters
    with pytest.raises(AdapterRejected, match="already served"):
        await registry.add("a1", adapter_copy("a1-again"))
    await registry.add("a2", adapter_copy("a2"))
    registry.close()

    # A restarted server reloads what was served; a folder gone meanwhile is dropped.
    shutil.rmtree(tmp_path / "a2")
    engine2 = FakeEngine(model_path=engine.model_path, tokenizer=None)
    registry2 = AdapterRegistry(db, engine2, base, 16)
    failed = await registry2.restore()
    assert [name for name, _ in failed] == ["a2"]
    assert [r.name for r in registry2.list()] == ["a1"] and set(engine2.adapters) == {"a1"}
    await registry2.remove("a1")
    assert registry2.list() == [] and engine2.adapters == {}
    with pytest.raises(NotFound):
        await registry2.remove("a1")
    registry2.close()
    assert AdapterRegistry(db, engine2, base, 16).list() == []


async def test_registry_engine_refusal_is_a_rejection(tmp_path, tiny_model_dir, base, adapter_copy):
    engine = FakeEngine(model_path=tiny_model_dir, tokenizer=None, fail_add="bad lora")
    registry = AdapterRegistry(tmp_path / "r.sqlite", engine, base, 16)
    with pytest.raises(AdapterRejected, match="bad lora"):
        await registry.add("a1", adapter_copy())
    assert registry.list() == []


# -- archives ------------------------------------------------------------------------------
def _tar(tmp_path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    path = tmp_path / "upload.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tf.addfile(info)
    return path


def _adapter_members(tiny_adapter: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.name: p.read_bytes() for p in tiny_adapter.iterdir() if p.is_file()}


def test_archive_extracts_nested_folder(tmp_path, tiny_adapter, base):
    archive = _tar(tmp_path, _adapter_members(tiny_adapter, "my-adapter/"))
    dest = extract_archive(archive, tmp_path / "out" / "a1", 10**8)
    assert check_adapter(dest, base, 16).rank == 8
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("evil", ["../escape.txt", "/abs/path.txt", "a/../../escape.txt"])
def test_archive_path_traversal_refused(tmp_path, tiny_adapter, evil):
    members = {**_adapter_members(tiny_adapter), evil: b"x"}
    with pytest.raises(AdapterRejected) as exc:
        extract_archive(_tar(tmp_path, members), tmp_path / "out" / "a1", 10**8)
    assert exc.value.code == "unsafe_archive"
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "a1").exists()


def test_archive_links_and_bombs_refused(tmp_path, tiny_adapter):
    with pytest.raises(AdapterRejected, match="not a regular file"):
        extract_archive(_tar(tmp_path, _adapter_members(tiny_adapter), symlink="link"),
                        tmp_path / "out" / "a1", 10**8)
    zpath = tmp_path / "big.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("adapter_config.json", "{}")
        zf.writestr("adapter_model.safetensors", b"\0" * 2_000_000)
    with pytest.raises(AdapterRejected) as exc:
        extract_archive(zpath, tmp_path / "out" / "a2", 1_000_000)
    assert exc.value.code == "archive_too_large"
    with pytest.raises(AdapterRejected, match="not a .zip"):
        (tmp_path / "junk").write_bytes(b"junk")
        extract_archive(tmp_path / "junk", tmp_path / "out" / "a3", 10**8)


# -- watcher -------------------------------------------------------------------------------
async def test_watcher_serves_complete_folders_and_unloads_removed(tmp_path, engine, base,
                                                                  tiny_adapter):
    registry = AdapterRegistry(tmp_path / "r.sqlite", engine, base, 16)
    watched = tmp_path / "watched"
    watcher = AdapterDirWatcher(registry, watched, 0.1)
    await watcher.scan()
    (watched / "partial").mkdir()
    (watched / "partial" / "adapter_config.json").write_text("{}")  # no weights yet
    shutil.copytree(tiny_adapter, watched / ".tmp-in-progress")
    shutil.copytree(tiny_adapter, watched / "ready-one")
    bad = watched / "bad-rank"
    shutil.copytree(tiny_adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    await watcher.scan()
    assert [r.name for r in registry.list()] == ["ready-one"]
    assert "max_lora_rank" in watcher.rejected[bad][1]
    await watcher.scan()  # a rejected folder is not retried while unchanged
    shutil.rmtree(watched / "ready-one")
    await watcher.scan()
    assert registry.list() == [] and engine.adapters == {}


# -- settings ------------------------------------------------------------------------------
def test_settings_validation(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="max_lora_rank must be one of"):
        Settings(max_lora_rank=12)
    with pytest.raises(ValueError, match="max_cpu_loras"):
        Settings(max_loras=8, max_cpu_loras=4)
    with pytest.raises(ValueError, match="placeholder"):
        Settings(admin_api_keys="changeme")
    monkeypatch.setenv("TUNESERVE_USER_API_KEYS", "user-key-aaaaaaaa, user-key-bbbbbbbb")
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"admin": ["admin-key-cccccccc"]}))
    settings = Settings(api_keys_file=keys)
    assert settings.user_api_keys == ["user-key-aaaaaaaa", "user-key-bbbbbbbb"]
    assert settings.admin_api_keys == ["admin-key-cccccccc"] and settings.auth_enabled
    assert "aaaaaaaa" not in repr(settings) and "cccccccc" not in repr(settings)
    monkeypatch.delenv("TUNESERVE_USER_API_KEYS")
    assert not Settings().auth_enabled
