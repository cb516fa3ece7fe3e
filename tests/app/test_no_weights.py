"""The studio started with its defaults on a machine with no weights and no network: it still serves the
page, and says in the page and through the API what is missing and what to do."""
from __future__ import annotations

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def bare_client(servers):
    from gradio_client import Client

    return Client(servers["no_weights"].url, verbose=False)


def test_status_says_what_is_missing_and_what_to_do(bare_client):
    status = bare_client.predict(api_name="/status")
    assert status.startswith("⚠️ **No model could be loaded**")
    assert "Grounding DINO (swint_ogc)" in status and "SAM:" in status
    assert "--detector" in status and "--sam-checkpoint" in status
    assert "LocalEntryNotFoundError" not in status  # library text stays in the server log


def test_requests_get_the_same_message(bare_client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = tmp_path / "image.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(path)
    with pytest.raises(AppError) as caught:
        bare_client.predict(handle_file(str(path)), "cat", 0.35, 0.25, 1.0, True, api_name="/segment")
    assert "swint_ogc" in str(caught.value) and "Traceback" not in str(caught.value)
