"""Phrases written as people write them, and the prompt families the shapes detector is scored on."""
import numpy as np
import pytest

from grounding.train.wording import STYLES, natural_phrase, plural, unrelated_phrase, written


def test_each_style_keeps_the_core_words_in_the_phrase():
    rng = np.random.default_rng(0)
    assert written("orange ring", "article", rng) == ("an orange ring", "orange ring")
    assert written("red circle", "plural", rng) == ("red circles", "red circles")
    assert plural("teddy bear") == "teddy bears" and plural("person") == "people"
    for _ in range(200):
        style = str(rng.choice(STYLES))
        phrase, core = written("purple star", style, rng)
        assert core in phrase and core.startswith("purple star")
        phrase, core = natural_phrase("green square", rng)
        assert core.lower() in phrase.lower()
    assert all(unrelated_phrase(rng).strip() for _ in range(50))


@pytest.mark.parametrize(("family", "check"), [
    ("plain (X)", lambda r: r.recall >= 0.8 and r.precision >= 0.7),
    ("absent phrases (no box)", lambda r: r.no_box >= 0.6 and r.recall is None),
])
def test_prompt_families_score_the_shipped_detector(family, check):
    from grounding.detector import GroundingDetector
    from grounding.pipeline import GroundedSAM
    from grounding.shipped import DETECTOR_FILE, shapes_dir
    from grounding.train.prompt_eval import evaluate_family

    pipeline = GroundedSAM(GroundingDetector.from_pretrained(shapes_dir() / DETECTOR_FILE, device="cpu", download=False))
    result = evaluate_family(pipeline, family, scenes=20, seed=4000)
    assert result.scenes == 20 and check(result)
