"""The page's example rows: files present and readable, prompts that pass the studio's checks, and the
shapes scenes equal to what the shapes generator draws for their seeds."""
import numpy as np
from PIL import Image

from app.examples import EXAMPLES_DIR, example_rows
from grounding.text import normalize_caption
from grounding.train.shapes import ShapesConfig, category_names, render_scene


def test_every_example_is_a_readable_image_with_a_valid_prompt():
    rows = example_rows()
    assert len(rows) == 5
    for path, prompt, box, text in rows:
        with Image.open(path) as image:
            assert image.mode in ("RGB", "RGBA", "P") and min(image.size) >= 64
        assert normalize_caption(prompt) and 0 <= box <= 1 and 0 <= text <= 1


def test_shapes_scenes_are_the_generators_and_their_prompts_use_its_phrases():
    config = ShapesConfig(image_size=(256, 256))
    for index, seed in ((1, 7001), (2, 7003)):
        drawn, instances = render_scene(np.random.default_rng([seed, 0]), config)
        stored = Image.open(EXAMPLES_DIR / f"shapes_scene_{index}.png").convert("RGB")
        assert np.array_equal(np.asarray(stored), np.asarray(drawn))
        prompt = next(p for f, p, _, _ in example_rows() if f.endswith(f"shapes_scene_{index}.png"))
        phrases = [phrase.strip() for phrase in prompt.split(".") if phrase.strip()]
        assert set(phrases) <= set(category_names())
        assert {i.category for i in instances} & set(phrases)  # at least one phrase is in the picture
