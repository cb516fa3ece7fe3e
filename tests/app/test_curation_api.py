"""Curation through the launched studio's API (/refine, /edit, /export) with gradio_client: each client is its own
session, edits survive slider moves where their box is still shown, the zip holds exactly what is shown with the
edit history, bad edits are clear errors that lose nothing, and two clients never see each other's edits."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

PROMPT = "house . tree . sun"


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    """A 300x200 scene no other test uses."""
    path = tmp_path_factory.mktemp("curation") / "yard.png"
    image = Image.new("RGB", (300, 200), (200, 220, 180))
    image.paste((180, 40, 40), (30, 60, 120, 170))
    image.paste((40, 60, 170), (170, 30, 260, 120))
    image.save(path)
    return path


def session(studio_url: str):
    from gradio_client import Client

    return Client(studio_url, verbose=False)


def inputs(picture: Path, box: float = 0.0, prompt: str = PROMPT) -> dict:
    from gradio_client import handle_file

    return dict(image=handle_file(str(picture)), prompt=prompt, box_threshold=box, text_threshold=0.0, nms_iou=1.0,
                use_sam=True)


def rows(outputs) -> list[list]:
    return outputs[2]["data"]


def edit_error(client, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(**kwargs)
    return str(caught.value)


def test_refine_drop_relabel_add_box_and_export(studio_url, picture):
    client = session(studio_url)
    first = client.predict(**inputs(picture), api_name="/segment")
    assert rows(first) and all(row[8] == "" for row in rows(first))
    width, height = 300, 200
    box_mask = rows(first)[0][7]

    refined = client.predict(**inputs(picture), object=1, points=[[50, 80, 1], [250, 150, 0]], api_name="/refine")
    assert rows(refined)[0][8] == "2 clicks (+1 −1)" and "Selected: #1" in refined[1]
    assert rows(refined)[0][7] != box_mask  # the mask was cut again
    relabelled = client.predict(**inputs(picture), operation="relabel", object=1, label="garden shed", api_name="/edit")
    assert rows(relabelled)[0][1] == "garden shed" and "relabelled" in rows(relabelled)[0][8]
    added = client.predict(**inputs(picture), operation="add_box", label="door", box=[40, 100, 90, 170], api_name="/edit")
    door = rows(added)[-1]
    assert door[1] == "door" and door[3:7] == [40.0, 100.0, 90.0, 170.0] and door[8] == "added" and door[7] > 0
    count = len(rows(added))
    dropped = client.predict(**inputs(picture), operation="drop", object=count, api_name="/edit")
    assert rows(dropped)[-1][8] == "added, dropped" and len(rows(dropped)) == count
    assert len(dropped[3]["detections"]) == count - 1  # the table lists the dropped door (to restore it), the JSON not
    restored = client.predict(**inputs(picture), operation="restore", object=count, api_name="/edit")
    assert len(restored[3]["detections"]) == count

    with zipfile.ZipFile(client.predict(**inputs(picture), api_name="/export")) as archive:
        meta = json.loads(archive.read("meta.json"))
        coco = json.loads(archive.read("coco.json"))
        names = archive.namelist()
    assert len(coco["annotations"]) == count and sum(n.startswith("masks/") for n in names) == count
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    assert {"garden shed", "door"} <= {categories[a["category_id"]] for a in coco["annotations"]}
    objects = meta["curation"]["objects"]
    assert objects[0]["phrase"] == "garden shed" and objects[0]["clicks"] == [[50.0, 80.0, 1], [250.0, 150.0, 0]]
    assert objects[-1]["source"] == "added" and objects[-1]["box_xyxy"] == [40.0, 100.0, 90.0, 170.0]
    operations = [entry["op"] for entry in meta["curation"]["history"]]
    assert operations == ["clicks", "relabel", "add_box", "drop", "restore"]
    assert (width, height) == tuple(meta["image"]["original_size"])


def test_edits_follow_their_box_through_slider_moves(studio_url, picture):
    client = session(studio_url)
    first = client.predict(**inputs(picture), api_name="/segment")
    top_score, top_box = rows(first)[0][2], rows(first)[0][3:7]
    client.predict(**inputs(picture), operation="relabel", object=1, label="barn", api_name="/edit")
    above = client.predict(**inputs(picture, box=min(top_score + 0.01, 1.0)), api_name="/refilter")
    assert all(row[3:7] != top_box for row in rows(above))  # that box is not shown now...
    back = client.predict(**inputs(picture, box=0.0), api_name="/refilter")
    assert rows(back)[0][1] == "barn" and rows(back)[0][3:7] == top_box  # ...and keeps its label when it is again
    other_prompt = client.predict(**inputs(picture, prompt="tree . sun"), api_name="/segment")
    assert all(row[8] == "" for row in rows(other_prompt))  # a new prompt starts clean


def test_two_clients_see_only_their_own_edits(studio_url, picture):
    alice, bob = session(studio_url), session(studio_url)
    alice.predict(**inputs(picture), api_name="/segment")
    alice.predict(**inputs(picture), operation="relabel", object=1, label="alice's label", api_name="/edit")
    bobs = bob.predict(**inputs(picture), api_name="/segment")
    assert all("alice" not in row[1] and row[8] == "" for row in rows(bobs))
    bob.predict(**inputs(picture), operation="drop", object=1, api_name="/edit")
    alices = alice.predict(**inputs(picture), api_name="/refilter")
    assert rows(alices)[0][1] == "alice's label" and "dropped" not in rows(alices)[0][8]
    with zipfile.ZipFile(bob.predict(**inputs(picture), api_name="/export")) as archive:
        assert "alice" not in archive.read("meta.json").decode()


def test_bad_edits_are_clear_errors_and_lose_nothing(studio_url, picture):
    client = session(studio_url)
    client.predict(**inputs(picture), api_name="/segment")
    client.predict(**inputs(picture), operation="relabel", object=1, label="kept", api_name="/edit")
    bad = [
        (dict(object=1, points=[[400, 10, 1]], api_name="/refine"), "outside the 300×200 image"),
        (dict(object=99, points=[[10, 10, 1]], api_name="/refine"), "no object #99"),
        (dict(object=1, points=[[10, 10, 1]] * 10_000, api_name="/refine"), "at most 32"),
        (dict(object=1, points="left", api_name="/refine"), "must be a list"),
        (dict(operation="relabel", object=1, label="x" * 10_000, api_name="/edit"), "at most 100 characters"),
        (dict(operation="relabel", object=1, label="   ", api_name="/edit"), "Type or choose a label"),
        (dict(operation="explode", object=1, api_name="/edit"), "operation must be one of"),
        (dict(operation="drop", object="first", api_name="/edit"), "number in the table"),
        (dict(operation="add_box", box=[10, 10, 10, 90], api_name="/edit"), "no area"),
        (dict(operation="undo_point", object=1, api_name="/edit"), "no click to undo"),
    ]
    for kwargs, message in bad:
        text = edit_error(client, **inputs(picture), **kwargs)
        assert message in text, (kwargs.get("api_name"), text)
        assert "Traceback" not in text and "/tmp" not in text
    still = client.predict(**inputs(picture), api_name="/refilter")
    assert rows(still)[0][1] == "kept"  # nothing lost


def test_clicks_need_masks_on(studio_url, picture):
    client = session(studio_url)
    text = edit_error(client, **{**inputs(picture), "use_sam": False}, object=1, points=[[10, 10, 1]], api_name="/refine")
    assert "Masks are off" in text
