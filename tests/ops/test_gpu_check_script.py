"""bench/gpu_check.py stays runnable: its CPU dry run (tiny sizes, tiny model) goes through every section."""
import json

import pytest

from bench.gpu_check import main


@pytest.mark.timeout(600)
def test_gpu_check_dry_run(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    main(["--dry-run", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "GPU check on CPU" in printed
    numbers = json.loads(out.read_text())["numbers"]
    assert numbers["build/backend"] == "pytorch (cpu tensors)"
    assert numbers["op time/Q=64 float32 fwd pytorch"] > 0
    assert numbers["model/ours fp32 forward"] > 0
    assert numbers["model/transformers fp32 forward"] > 0
    # same random weights: ours and transformers agree in fp32
    assert numbers["model/ours vs transformers fp32 max|dprob| same query"] < 1e-4
