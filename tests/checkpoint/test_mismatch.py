"""Missing / unexpected / mis-shaped keys are reported by name; unreadable files give typed errors."""
import pytest
import torch

from grounding.checkpoint import LoadReport, load_model, load_state_dict_strict, save_checkpoint
from grounding.errors import CheckpointMismatchError, WeightsUnavailableError
from grounding.model import GroundingDINO


def test_missing_and_unexpected_keys_are_listed(model, tmp_path):
    state = dict(model.state_dict())
    del state["feat_map.weight"]
    del state["transformer.level_embed"]
    state["transformer.extra_head.weight"] = torch.zeros(3)
    state["bert.pooler.dense.weight"] = torch.zeros(2, 2)  # ignored: official files carry the unused pooler
    torch.save({"model": state, "config": model.config.to_dict()}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError) as error:
        load_model(tmp_path / "broken.pth")
    message = str(error.value)
    assert "2 missing: feat_map.weight, transformer.level_embed" in message
    assert "1 unexpected: transformer.extra_head.weight" in message
    assert "pooler" not in message.split("\n", 1)[1]


def test_shape_mismatch_is_listed(model):
    state = dict(model.state_dict())
    state["feat_map.weight"] = torch.zeros(7, 7)
    report = LoadReport(source="test", format="ours", config_origin="test")
    with pytest.raises(CheckpointMismatchError, match=r"feat_map.weight: \(7, 7\) vs"):
        load_state_dict_strict(GroundingDINO(model.config), state, report)
    assert report.mismatched and not report.missing and not report.unexpected


def test_checkpoint_of_another_architecture_is_refused(model, tmp_path):
    from grounding.config import tiny

    other = tiny()
    other.d_model = 64
    save_checkpoint(model, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_model(tmp_path / "tiny.pth", config=other)


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointMismatchError, match="not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatchError, match="expected a dict"):
        load_model(tmp_path / "list.pth")
    with pytest.raises(WeightsUnavailableError, match="neither model.safetensors"):
        load_model(tmp_path)


def test_pickled_code_is_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model": {}, "hook": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        load_model(tmp_path / "evil.pth")
