"""official_to_hf / hf_to_official against real transformers key sets (random init, no hub)."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import GroundingDinoForObjectDetection

from grounding.config import swint_ogc, tiny
from grounding.keymap import hf_config, hf_to_official, official_to_hf
from grounding.model import GroundingDINO
from tests.fixtures.dino import official_state_dict, tiny_model


@pytest.mark.parametrize("preset", [tiny, swint_ogc], ids=["tiny", "swint_ogc"])
def test_bijection_on_transformers_key_sets(preset):
    config = preset()
    with torch.device("meta"):  # key sets and shapes only: no memory, no init time
        ours = GroundingDINO(config).state_dict()
        theirs = GroundingDinoForObjectDetection(hf_config(config)).state_dict()

    mapped = hf_to_official(theirs)  # transformers-5 module names
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)

    back = official_to_hf(ours)  # file names; compare with the module names through hf_to_official
    assert len(back) == len(theirs) - 2  # all but swin.layernorm (weight, bias), unused by the backbone
    assert set(hf_to_official(back)) == set(ours)


def test_round_trips_are_identity_on_values():
    model = tiny_model(seed=1)
    ours = model.state_dict()
    again = hf_to_official(official_to_hf(ours))
    assert set(again) == set(ours)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_matches_save_pretrained_file(tmp_path):
    """official_to_hf(ours) == what transformers' save_pretrained writes for the same weights, key by key."""
    config = tiny()
    torch.manual_seed(0)
    hf_model = GroundingDinoForObjectDetection(hf_config(config))
    hf_model.save_pretrained(tmp_path)
    written = load_file(tmp_path / "model.safetensors")

    ours = hf_to_official(hf_model.state_dict())
    mapped = official_to_hf(ours)
    for key, tensor in written.items():
        if ".swin.layernorm." in key:
            continue
        assert torch.equal(mapped[key], tensor), key
    extra = set(mapped) - set(written)  # the shared box head under its other aliases
    assert extra and all(k.startswith(("bbox_embed.", "model.decoder.bbox_embed.")) for k in extra)

    from_file = hf_to_official(written)  # the deduplicated file restores every alias
    assert set(from_file) == set(ours)
    assert all(torch.equal(from_file[k], ours[k]) for k in ours)


def test_qkv_split_order_and_renames():
    model = tiny_model(seed=2)
    ours = model.state_dict()
    hf = official_to_hf(ours)
    qkv = ours["backbone.0.layers.1.blocks.0.attn.qkv.weight"]
    dim = qkv.shape[1]
    prefix = "model.backbone.conv_encoder.model.encoder.layers.1.blocks.0.attention.self."
    for i, part in enumerate(["query", "key", "value"]):
        assert torch.equal(hf[prefix + part + ".weight"], qkv[i * dim:(i + 1) * dim])
    in_proj = ours["transformer.encoder.text_layers.0.self_attn.in_proj_bias"]
    value_bias = hf["model.encoder.layers.0.text_enhancer_layer.self_attn.value.bias"]
    assert torch.equal(value_bias, in_proj[-in_proj.shape[0] // 3:])
    assert torch.equal(hf["model.encoder.layers.1.fusion_layer.vision_param"],
                       ours["transformer.encoder.fusion_layers.1.gamma_v"])
    assert torch.equal(hf["model.backbone.conv_encoder.model.hidden_states_norms.stage2.weight"],
                       ours["backbone.0.norm1.weight"])
    assert torch.equal(hf["model.backbone.conv_encoder.model.encoder.layers.2.downsample.reduction.weight"],
                       ours["backbone.0.layers.2.downsample.reduction.weight"])


def test_ignored_and_unknown_keys():
    model = tiny_model()
    official = official_state_dict(model)  # carries relative_position_index like the released files
    official["bert.embeddings.position_ids"] = torch.arange(512)[None]
    official["bert.embeddings.token_type_ids"] = torch.zeros(1, 512, dtype=torch.long)
    official["bert.pooler.dense.weight"] = torch.zeros(2, 2)
    official["something.else"] = torch.zeros(1)
    hf = official_to_hf(official)
    assert not any(("relative_position_index" in k or "position_ids" in k or "token_type_ids" in k
                    or "pooler" in k) for k in hf)
    assert "something.else" in hf  # passed through: the loader reports it as unexpected

    with pytest.raises(ValueError, match="query/key/value"):
        hf_to_official({k: v for k, v in hf.items() if not k.endswith("attention.self.key.weight")})
