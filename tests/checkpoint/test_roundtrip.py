"""Our weights saved in the official .pth layout and in the HF layout load back to identical outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file

from grounding.checkpoint import (
    config_from_hf,
    load_model,
    map_tensors_keeping_ties,
    read_checkpoint,
    save_checkpoint,
    save_hf_checkpoint,
)
from grounding.config import swinb_cogcoor, swint_ogc, tiny
from grounding.keymap import hf_config, hf_to_official
from tests.checkpoint.conftest import run
from tests.fixtures.dino import official_state_dict, tiny_hf_checkpoint, tiny_official_checkpoint


def assert_same_outputs(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_official_layout_round_trip(model, inputs, tmp_path):
    path = save_checkpoint(model, tmp_path / "tiny.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "config"}
    assert set(raw["model"]) == set(model.state_dict())  # official key names, aliases included
    layers = range(model.config.decoder_layers)
    tied = [raw["model"][f"{prefix}bbox_embed.{i}.layers.0.weight"] for prefix in ("", "transformer.decoder.") for i in layers]
    assert len({t.untyped_storage().data_ptr() for t in tied}) == 1  # the shared box head is stored once
    loaded, report = load_model(path)
    assert report.ok and report.format == "ours" and report.config_origin == "checkpoint config"
    assert report.loaded == len(model.state_dict())
    assert loaded.config == model.config
    assert_same_outputs(run(loaded, inputs), run(model, inputs))


def test_tied_tensors_stay_tied_through_a_copying_conversion():
    # save_checkpoint's .cpu() copies CUDA tensors one key at a time; the shared box head must stay one tensor
    head, other = torch.randn(4, 4), torch.randn(4, 4)
    out = map_tensors_keeping_ties({"a": head, "b": head, "c": other, "row": head[1:]}, lambda t: t.clone())
    assert out["a"] is out["b"] and out["a"] is not out["c"] and out["row"] is not out["a"]
    assert out["a"].data_ptr() != head.data_ptr() and torch.equal(out["row"], head[1:])


def test_hf_layout_round_trip(model, inputs, tmp_path):
    directory = save_hf_checkpoint(model, tmp_path / "hf")
    tensors = load_file(directory / "model.safetensors")
    assert "bbox_embed.0.layers.0.weight" in tensors and "bbox_embed.1.layers.0.weight" not in tensors
    assert any(k.startswith("model.backbone.conv_encoder.model.encoder.layers.0.blocks.0.attention.self.query")
               for k in tensors)
    assert json.loads((directory / "config.json").read_text())["model_type"] == "grounding-dino"
    for source in (directory, directory / "model.safetensors"):
        loaded, report = load_model(source)
        assert report.ok and report.format == "hf" and report.config_origin.endswith("config.json")
        assert loaded.config == model.config
        assert_same_outputs(run(loaded, inputs), run(model, inputs))


def test_hf_layout_is_what_transformers_loads(model, tmp_path):
    from transformers import GroundingDinoForObjectDetection

    directory = save_hf_checkpoint(model, tmp_path / "hf")
    _, info = GroundingDinoForObjectDetection.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_model_a_fixture_checkpoints_load(inputs, tmp_path):
    """Checkpoints written by tests/fixtures/dino.py (official buffers included, save_pretrained layout)."""
    reference = tiny_official_checkpoint(tmp_path / "fixture.pth", seed=5)
    loaded, report = load_model(tmp_path / "fixture.pth")
    assert report.ok and any(key.endswith("relative_position_index") for key in report.ignored)
    assert_same_outputs(run(loaded, inputs), run(reference, inputs))
    reference = tiny_hf_checkpoint(tmp_path / "fixture_hf", seed=5)
    loaded, _ = load_model(tmp_path / "fixture_hf")
    assert_same_outputs(run(loaded, inputs), run(reference, inputs))


def test_official_checkpoint_without_config_module_prefix_and_extras(model, inputs, tmp_path):
    """A file shaped like the released .pth: "model" with "module." keys, recomputed buffers, other entries."""
    state = {f"module.{k}": v for k, v in official_state_dict(model).items()}
    state["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"model": state, "optimizer": {}, "epoch": 11}, tmp_path / "released.pth")
    # Without a config the architecture is read from the tensors; the tiny model is neither Swin-T nor Swin-B.
    with pytest.raises(Exception, match="patch embedding width is 16"):
        read_checkpoint(tmp_path / "released.pth")
    loaded, report = load_model(tmp_path / "released.pth", config=tiny())
    assert report.format == "official" and report.ok
    assert "bert.embeddings.position_ids" in report.ignored
    assert_same_outputs(run(loaded, inputs), run(model, inputs))


def test_architecture_inferred_from_tensor_shapes():
    from grounding.checkpoint import infer_config

    assert infer_config({"backbone.0.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}) == swint_ogc()
    assert infer_config({"backbone.0.patch_embed.proj.weight": torch.zeros(128, 3, 4, 4)}) == swinb_cogcoor()


@pytest.mark.parametrize("preset", [tiny, swint_ogc, swinb_cogcoor])
def test_hf_config_round_trip(preset):
    config = preset()
    assert config_from_hf(hf_config(config).to_dict()) == config


def test_hub_config_json_with_only_non_default_fields():
    """Old transformers wrote config.json as a diff to the defaults (IDEA-Research/grounding-dino-tiny is
    the default architecture); missing fields take transformers' defaults."""
    assert config_from_hf({"model_type": "grounding-dino"}) == swint_ogc()
    legacy = {  # fields transformers 4.40 wrote and 5.x no longer has
        "model_type": "grounding-dino", "transformers_version": "4.40.0.dev0", "backbone": None,
        "backbone_kwargs": None, "use_timm_backbone": False, "use_pretrained_backbone": False,
        "torch_dtype": "float32", "text_config": {"model_type": "bert"},
        "backbone_config": {"model_type": "swin", "out_features": ["stage2", "stage3", "stage4"],
                            "out_indices": [2, 3, 4]},
    }
    assert config_from_hf(legacy) == swint_ogc()
    legacy["backbone_config"].update(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                                     image_size=384)
    assert config_from_hf(legacy) == swinb_cogcoor()


@pytest.mark.filterwarnings("ignore:.*meta.*:UserWarning")
@pytest.mark.parametrize("preset", [swint_ogc, swinb_cogcoor])
def test_full_size_checkpoints_fit_on_meta_device(preset):
    """Full Swin-T / Swin-B key sets and shapes, without allocating memory: transformers' model (as
    from_pretrained builds it for IDEA-Research/grounding-dino-tiny / -base) mapped to ours, and the official
    layout's architecture read back from its tensor shapes."""
    from transformers import GroundingDinoForObjectDetection

    from grounding.checkpoint import LoadReport, infer_config, load_state_dict_strict
    from grounding.model import GroundingDINO

    with torch.device("meta"):
        reference = GroundingDinoForObjectDetection(hf_config(preset()))
        ours = GroundingDINO(config_from_hf(reference.config.to_dict()))
    assert ours.config == preset()
    report = load_state_dict_strict(ours, hf_to_official(reference.state_dict()), LoadReport("meta", "hf", "test"))
    assert report.ok and report.loaded == len(ours.state_dict())
    assert infer_config(ours.state_dict()) == preset()
