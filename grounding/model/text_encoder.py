"""Text side of Grounding DINO: BERT with the sub-sentence block mask and per-phrase position ids.

A caption such as "cat . dog ." is tokenised to [CLS] cat . dog . [SEP]. Every phrase together with its
closing delimiter forms a block whose tokens see only each other inside BERT and the text enhancer, and
whose position ids restart at 0; [CLS], [SEP], padding and a phrase that is never closed by a delimiter
see only themselves (position 0). The model computes both from `input_ids`, so callers only tokenise.

One deliberate difference from the official code: a span closed by the row's last real token (its [SEP])
is not a phrase in every row. The official code tests the last column of the padded batch instead, so an
unclosed trailing phrase ("cat . dog") became a block in a padded row but not when run alone; here a row's
result never depends on the other captions of the batch. Captions that end with "." are unaffected.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import BertConfig, BertModel

from grounding.config import TextEncoderConfig

CLS_ID, SEP_ID, PERIOD_ID, QUESTION_ID = 101, 102, 1012, 1029
SPECIAL_TOKEN_IDS = (CLS_ID, SEP_ID, PERIOD_ID, QUESTION_ID)


def build_bert(config: TextEncoderConfig) -> BertModel:
    """A randomly initialised BertModel without pooler (its keys are `embeddings.*`, `encoder.layer.{i}.*`)."""
    bert_config = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(bert_config, add_pooling_layer=False)


def sub_sentence_masks(input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Block mask and per-phrase position ids from token ids (vectorised, per row of the batch).

    Args:
        input_ids: [B, T] int64 token ids (bert-base-uncased vocabulary).
        attention_mask: [B, T], 1/True = real token; default: every token that is not [PAD] (id 0).
    Returns:
        block_mask: [B, T, T] bool, True where token i may attend to token j.
        position_ids: [B, T] int64, 0, 1, 2, ... inside each closed phrase, 0 elsewhere.
    """
    batch, length = input_ids.shape
    device = input_ids.device
    special = torch.zeros_like(input_ids, dtype=torch.bool)  # [B, T]; compared id by id: no host->device copy
    for token_id in SPECIAL_TOKEN_IDS:
        special |= input_ids == token_id
    index = torch.arange(length, device=device).expand(batch, length)  # [B, T]

    if attention_mask is None:
        attention_mask = input_ids != 0
    last = attention_mask.long().sum(1, keepdim=True) - 1  # [B, 1] column of each row's last real token

    # Index of the delimiter that closes each token's span: the first special token at or after it
    # (`length` if none). A span closed at column 0 or at the row's last real token is not a phrase.
    closer = torch.where(special, index, torch.full_like(index, length))
    closer = closer.flip(1).cummin(1).values.flip(1)  # [B, T]
    in_phrase = (closer > 0) & (closer < last)  # [B, T]

    # Index of the last special token strictly before each token (-1 if none): the span starts after it.
    opener = torch.where(special, index, torch.full_like(index, -1)).cummax(1).values
    opener = torch.cat([opener.new_full((batch, 1), -1), opener[:, :-1]], dim=1)  # [B, T]

    same_span = closer[:, :, None] == closer[:, None, :]  # [B, T, T]
    block_mask = same_span & in_phrase[:, :, None]
    block_mask |= torch.eye(length, dtype=torch.bool, device=device)
    position_ids = torch.where(in_phrase, index - opener - 1, torch.zeros_like(index))
    return block_mask, position_ids


def run_bert(bert: BertModel, input_ids: Tensor, block_mask: Tensor, position_ids: Tensor) -> Tensor:
    """BERT's last hidden state under the block mask and phrase position ids.

    The mask goes in as a 4-D additive float mask [B, 1, T, T]: transformers passes a 4-D mask through
    unchanged to every attention implementation (eager adds it, sdpa adds a float mask), whereas a bool
    mask would be added as 0/1 by the eager implementation.

    Args:
        input_ids: [B, T]; block_mask: [B, T, T] bool (True = attend); position_ids: [B, T].
    Returns:
        [B, T, hidden_size]
    """
    dtype = bert.embeddings.word_embeddings.weight.dtype
    additive = torch.zeros(block_mask.shape, dtype=dtype, device=block_mask.device)
    additive.masked_fill_(~block_mask, torch.finfo(dtype).min)
    output = bert(
        input_ids=input_ids,
        attention_mask=additive[:, None],
        token_type_ids=torch.zeros_like(input_ids),
        position_ids=position_ids,
    )
    return output.last_hidden_state
