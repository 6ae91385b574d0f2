"""The rollout part (lightning_post/methods/rollout.py) on its own: replies end at their first EOS, the score function
gets each reply's text and tokens with its prompt record, and the reply log-probs of a padded batch equal those of
one plain forward per reply (Korean prompts included)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_post import SFTModule
from lightning_post.data.prompts import PromptExample, collate_prompts
from lightning_post.methods.rollout import RolloutEngine, Sampling
from lightning_post.models.loading import load_causal_lm

PROMPTS = ["Name a colour.", "한국의 수도는 어디인가요?", "Write one short sentence about the sea, please."]


@pytest.fixture(scope="module")
def policy(tiny_path):
    module = SFTModule(tiny_path)  # any method: the part uses its model, tokenizer, forward_hidden and lm_head
    module.configure_model()
    return module


def prompt_batch(tokenizer) -> dict:
    """Left-padded prompts of different lengths, as PromptDataModule collates them."""
    examples = [PromptExample(tokenizer.encode(text), {"prompt": [{"role": "user", "content": text}]}, i)
                for i, text in enumerate(PROMPTS)]
    return collate_prompts(examples, tokenizer.pad_token_id)


def test_reply_logps_equal_one_plain_forward_per_reply(policy, tiny_path):
    """Sampled at temperature 0.7, two replies per prompt; each reply's log-probs from the padded (padding-free)
    batch equal ``log_softmax(logits / 0.7)`` at its tokens from an eager forward of prompt + reply alone."""
    engine = RolloutEngine(policy, lambda records, texts, ids: [0.0] * len(texts), Sampling(6, 0.7, 1.0))
    torch.manual_seed(0)
    replies = engine.sample(prompt_batch(policy.tokenizer), 2, do_sample=True)
    with torch.no_grad():
        logps, entropy, hidden = engine.response_logps(replies.seq, replies.response, need_entropy=True)
    N, R = replies.response.shape
    assert logps.shape == entropy.shape == (N, R) and hidden.shape[:2] == (N, R) and N == 2 * len(PROMPTS)
    plain = load_causal_lm(tiny_path, "float32", "eager")
    P = replies.seq["input_ids"].shape[1] - R
    for i in range(N):
        prompt = replies.seq["input_ids"][i, :P][replies.seq["attention_mask"][i, :P].bool()]
        n = int(replies.mask[i].sum())
        reply = replies.response[i, :n]
        with torch.no_grad():
            logits = plain(input_ids=torch.cat([prompt, reply])[None]).logits[0].float() / 0.7  # (T, V)
        expected = F.log_softmax(logits[len(prompt) - 1:-1], -1).gather(1, reply[:, None])[:, 0]  # (n,)
        torch.testing.assert_close(logps[i, :n], expected, atol=1e-4, rtol=0)


def test_replies_end_at_their_first_eos_and_are_scored_with_their_records(policy, monkeypatch):
    """A stand-in ``generate`` writes EOS at reply position 1 in row 0, nowhere in row 1 and at 0 in row 2: the masks
    are [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], tokens after EOS become padding, and the score function sees the
    tokens up to EOS with the prompt record of each reply."""
    tok = policy.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batch = prompt_batch(tok)
    written = torch.tensor([[11, eos, 12, 13], [21, 22, 23, 24], [eos, 31, eos, 32]])

    def generate(input_ids, attention_mask, **kwargs):
        return torch.cat([input_ids, written], 1)

    monkeypatch.setattr(policy.model, "generate", generate)
    seen = {}

    def score_fn(records, texts, ids):
        seen.update(records=records, texts=texts, ids=ids)
        return [1.0, 2.0, 3.0]

    engine = RolloutEngine(policy, score_fn, Sampling(4, 1.0, 1.0))
    replies = engine.sample(batch, 1, do_sample=False)
    assert replies.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert replies.response.tolist() == [[11, eos, pad, pad], [21, 22, 23, 24], [eos, pad, pad, pad]]
    assert replies.seq["attention_mask"][:, -4:].tolist() == replies.mask.tolist()
    scores = engine.score(replies)
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 2.0, 3.0]
    assert seen["ids"] == [[11, eos], [21, 22, 23, 24], [eos]]
    assert seen["records"] == batch["records"] and seen["texts"][2] == ""
