"""Sub-sentence block mask, phrase position ids and BERT wiring on real prompts with the shipped vocab."""
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer
from transformers.models.grounding_dino.modeling_grounding_dino import (
    generate_masks_with_special_tokens_and_transfer_map,
)

from grounding.config import TextEncoderConfig
from grounding.model.text_encoder import SPECIAL_TOKEN_IDS, build_bert, run_bert, sub_sentence_masks

REPO = Path(__file__).resolve().parents[2]
VOCAB = REPO / "assets" / "vocab.txt"

PROMPTS = [
    "cat . dog .",
    "a cat . a remote control .",
    "person . bicycle . car . motorcycle . airplane . bus . train . traffic light .",
    "the dog on the left ? the small cat .",
    "glass oil . potted plant",  # trailing phrase without a closing "."
    "hot dog . . teddy bear .",  # an empty phrase
]


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab=str(VOCAB))


def blocks_of(mask: torch.Tensor) -> set[tuple[int, ...]]:
    """The distinct rows of a [T, T] block mask, as tuples of attended columns."""
    return {tuple(torch.nonzero(row).flatten().tolist()) for row in mask}


def test_cat_dog_example(tokenizer):
    ids = tokenizer(["cat . dog ."], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == 101 and ids[0, -1] == 102 and (ids[0] == 1012).sum() == 2
    mask, pos = sub_sentence_masks(ids)
    assert pos[0].tolist() == [0, 0, 1, 0, 1, 0]
    assert blocks_of(mask[0]) == {(0,), (1, 2), (3, 4), (5,)}


def test_trailing_phrase_and_padding_are_self_only(tokenizer):
    batch = tokenizer(["glass oil . potted plant", "cat ."], padding="longest", return_tensors="pt")
    mask, pos = sub_sentence_masks(batch["input_ids"], batch["attention_mask"])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[:4] == ["[CLS]", "glass", "oil", "."]
    assert pos[0, :4].tolist() == [0, 0, 1, 2]
    # "potted plant [SEP]": the phrase is never closed by a delimiter -> self only, position 0
    n = len(tokens)
    for i in range(4, n):
        assert mask[0, i].nonzero().flatten().tolist() == [i]
        assert pos[0, i] == 0
    # the short caption's [SEP] and padding see only themselves
    length = int(batch["attention_mask"][1].sum())
    for i in range(length - 1, n):
        assert mask[1, i].nonzero().flatten().tolist() == [i]
        assert pos[1, i] == 0
    assert blocks_of(mask[1, : length - 1, : length - 1]) == {(0,), (1, 2)}


def test_rows_do_not_depend_on_the_batch(tokenizer):
    """Each row equals the same caption run alone, also for an unclosed trailing phrase in a padded row
    (where the official code would build a block because its [SEP] is no longer the last column)."""
    batch = tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    mask, pos = sub_sentence_masks(batch["input_ids"], batch["attention_mask"])
    default_mask, default_pos = sub_sentence_masks(batch["input_ids"])  # padding inferred from [PAD] ids
    assert torch.equal(mask, default_mask) and torch.equal(pos, default_pos)
    for row, prompt in enumerate(PROMPTS):
        single = tokenizer([prompt], return_tensors="pt")["input_ids"]
        single_mask, single_pos = sub_sentence_masks(single)
        t = single.shape[1]
        assert torch.equal(mask[row, :t, :t], single_mask[0])
        assert torch.equal(pos[row, :t], single_pos[0])
        assert not mask[row, :t, t:].any()


def test_matches_transformers(tokenizer):
    """Equal to transformers' (and the official) rule for single captions and for padded batches of
    captions that end with a delimiter, as the caption normaliser produces them."""
    special = torch.tensor(SPECIAL_TOKEN_IDS)
    for prompt in PROMPTS:
        ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
        ref_mask, ref_pos = generate_masks_with_special_tokens_and_transfer_map(ids, special)
        mask, pos = sub_sentence_masks(ids)
        assert torch.equal(mask, ref_mask) and torch.equal(pos, ref_pos), prompt
    closed = [p for p in PROMPTS if p.endswith((".", "?"))]
    batch = tokenizer(closed, padding="longest", return_tensors="pt")
    ref_mask, ref_pos = generate_masks_with_special_tokens_and_transfer_map(batch["input_ids"], special)
    mask, pos = sub_sentence_masks(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(mask, ref_mask) and torch.equal(pos, ref_pos)


def test_phrase_positions_restart(tokenizer):
    ids = tokenizer([PROMPTS[2]], return_tensors="pt")["input_ids"]
    _, pos = sub_sentence_masks(ids)
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    # "traffic light ." -> 0, 1, 2
    i = tokens.index("traffic")
    assert pos[0, i : i + 3].tolist() == [0, 1, 2]
    assert pos.max() == 2


def test_bert_sees_only_its_phrase(tokenizer):
    """Changing one phrase leaves the other phrase's BERT features unchanged (block mask in effect)."""
    torch.manual_seed(0)
    bert = build_bert(TextEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64)).eval()
    a = tokenizer(["cat . dog ."], return_tensors="pt")["input_ids"]
    b = tokenizer(["cat . car ."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ha = run_bert(bert, a, *sub_sentence_masks(a))
        hb = run_bert(bert, b, *sub_sentence_masks(b))
    assert torch.allclose(ha[0, :3], hb[0, :3], atol=1e-6)  # [CLS] cat .
    assert (ha[0, 3] - hb[0, 3]).abs().max() > 1e-3  # dog vs car


def test_bert_equals_manual_4d_mask_with_eager_and_sdpa(tokenizer):
    """Our additive mask gives the same result under both attention implementations, and equals what
    transformers' Grounding DINO feeds BERT (a 4-D bool mask under sdpa)."""
    torch.manual_seed(0)
    bert = build_bert(TextEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64)).eval()
    batch = tokenizer(PROMPTS[:3], padding="longest", return_tensors="pt")
    ids = batch["input_ids"]
    mask, pos = sub_sentence_masks(ids)
    with torch.no_grad():
        ours = run_bert(bert, ids, mask, pos)
        bert.config._attn_implementation = "sdpa"
        reference = bert(input_ids=ids, attention_mask=mask[:, None], token_type_ids=torch.zeros_like(ids),
                         position_ids=pos).last_hidden_state
        bert.config._attn_implementation = "eager"
        eager = run_bert(bert, ids, mask, pos)
    assert (ours - reference).abs().max() < 1e-5
    assert (eager - reference).abs().max() < 1e-5


def test_bert_keys_are_official():
    bert = build_bert(TextEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64))
    keys = set(bert.state_dict())
    assert "embeddings.word_embeddings.weight" in keys
    assert "encoder.layer.1.attention.self.query.weight" in keys
    assert "encoder.layer.1.output.LayerNorm.weight" in keys
    assert not any(k.startswith("pooler") for k in keys)
    assert "embeddings.position_ids" not in keys
