"""Hub download, HF cache, local-path override and the offline / unreachable-hub errors (for real)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grounding.checkpoint import CHECKPOINT_ENV, KNOWN_WEIGHTS, resolve_checkpoint, save_checkpoint
from grounding.detector import GroundingDetector
from grounding.errors import WeightsUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_offline_hub_error_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_checkpoint("swint_ogc", cache_dir=tmp_path)
    message = str(error.value)
    assert "groundingdino_swint_ogc.pth" in message and "ShilongLiu/GroundingDINO" in message
    assert "HF_HUB_OFFLINE" in message
    assert "from_pretrained('/path/to/groundingdino_swint_ogc.pth')" in message and CHECKPOINT_ENV in message
    with pytest.raises(WeightsUnavailableError, match="IDEA-Research/grounding-dino-base") as error:
        resolve_checkpoint("IDEA-Research/grounding-dino-base", cache_dir=tmp_path)
    assert "from_pretrained('/path/to/grounding-dino-base')" in str(error.value)
    with pytest.raises(WeightsUnavailableError, match="downloading is off"):
        resolve_checkpoint("swinb_cogcoor", download=False)


def _detector_in_subprocess(name: str, env: dict[str, str], cache: Path) -> subprocess.CompletedProcess:
    """from_pretrained in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE / HF_ENDPOINT at import."""
    code = (
        "from grounding.detector import GroundingDetector\n"
        "from grounding.errors import WeightsUnavailableError\n"
        "try:\n"
        f"    GroundingDetector.from_pretrained({name!r}, device='cpu', cache_dir={str(cache)!r})\n"
        "except WeightsUnavailableError as error:\n"
        "    print('ERROR', error)\n"
    )
    full_env = {**os.environ, **env}
    full_env.pop(CHECKPOINT_ENV, None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_unreachable_hub_is_a_clear_error(tmp_path):
    """Hub online mode, but the endpoint refuses connections (a closed local port): no hang, a typed error."""
    result = _detector_in_subprocess(
        "IDEA-Research/grounding-dino-tiny",
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "5"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ERROR could not get config.json from the Hugging Face hub repo "
                                    "IDEA-Research/grounding-dino-tiny"), result.stdout
    assert "pass the local path" in result.stdout and CHECKPOINT_ENV in result.stdout


def _fake_hub_cache(cache: Path, repo_id: str, filename: str) -> Path:
    """The layout huggingface_hub's cache uses: models--owner--name/{refs/main, snapshots/<commit>/file}."""
    commit = "0" * 40
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot / filename


def test_named_weights_come_from_the_hf_cache_offline(model, tmp_path, monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    hub = KNOWN_WEIGHTS["swint_ogc"]
    target = _fake_hub_cache(tmp_path, hub.repo_id, hub.filenames[0])
    save_checkpoint(model, target)
    assert resolve_checkpoint("swint_ogc", cache_dir=tmp_path) == target
    detector = GroundingDetector.from_pretrained("swint_ogc", device="cpu", cache_dir=tmp_path)
    assert detector.load_report.source == str(target) and detector.model.config == model.config


def test_local_path_and_env_override(model, tmp_path, monkeypatch):
    path = save_checkpoint(model, tmp_path / "mine.pth")
    assert resolve_checkpoint(path) == path
    monkeypatch.setenv(CHECKPOINT_ENV, str(path))
    assert resolve_checkpoint("swint_ogc") == path  # the env var replaces the download
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve_checkpoint("swint_ogc")
    monkeypatch.delenv(CHECKPOINT_ENV)
    with pytest.raises(WeightsUnavailableError, match="Known names: swint_ogc, swinb_cogcoor"):
        resolve_checkpoint(tmp_path / "missing.pth")
