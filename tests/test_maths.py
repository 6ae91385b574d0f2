"""Pure functions against values derived by hand."""

import math

import pytest
import torch

from lightning_post.data.collate import attention_bias, collate_rows, pack_greedy, split_batch
from lightning_post.records.tokenize import IGNORE_INDEX, Tokenized
from lightning_post.losses.sft import token_cross_entropy
from lightning_post.optim import lr_multiplier
from lightning_post.tracking import flatten


def test_token_cross_entropy_uniform_is_log_vocab():
    """Uniform logits over V classes: -log(1/V) = log V for every token."""
    losses = token_cross_entropy(torch.zeros(3, 5), torch.tensor([0, 3, 4]))
    assert torch.allclose(losses, torch.full((3,), math.log(5)))


def test_token_cross_entropy_two_classes():
    """logits (2, 0), target 0: -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928..."""
    loss = token_cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-7)
    assert loss.item() == pytest.approx(0.1269280110429725, abs=1e-7)


def test_lr_schedule_values():
    # warm-up of 2 steps: 1/2, 2/2; then cosine from 1 to 0.1 over 8 steps
    assert lr_multiplier(0, 2, 10, "cosine", 0.1) == 0.5
    assert lr_multiplier(1, 2, 10, "cosine", 0.1) == 1.0
    assert lr_multiplier(2, 2, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(6, 2, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert lr_multiplier(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(6, 2, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(6, 0, 10, "constant", 0.0) == 1.0


def test_pack_greedy():
    assert pack_greedy([3, 4, 2, 5], 7) == [[0, 1], [2, 3]]
    assert pack_greedy([7, 1, 6], 7) == [[0], [1, 2]]


def test_collate_packed_row_and_mask():
    a = Tokenized([5, 6, 7], [IGNORE_INDEX, 6, 7])
    b = Tokenized([8, 9], [IGNORE_INDEX, 9])
    c = Tokenized([4], [4])
    batch = collate_rows([[a, b], [c]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [4, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 0, 0]]
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    mask = attention_bias(batch["segment_ids"])
    assert mask.shape == (2, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],  # the second example starts fresh
        [0, 0, 0, 1, 1],
    ]
    assert mask[1, 0, 3].int().tolist() == [0, 1, 1, 1, 0]  # padding sees only padding, never an empty row


def test_split_batch_trims_padding_columns():
    rows = [[Tokenized([1, 2, 3, 4], [1, 2, 3, 4])], [Tokenized([1, 2], [1, 2])], [Tokenized([7], [7])]]
    batch = collate_rows(rows, pad_id=0)
    parts = split_batch(batch, 2)
    assert [p["input_ids"].tolist() for p in parts] == [[[1, 2, 3, 4], [1, 2, 0, 0]], [[7]]]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
