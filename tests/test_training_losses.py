"""Training objectives: the training forward sees exactly what inference sees, and the losses train."""

import torch
from conftest import VOCAB, make_eagle3, make_specblock, make_target

from specblock_hf.candidates_eagle3 import Eagle3CandidateGenerator, Eagle3TreeConfig
from specblock_hf.candidates_specblock import SpecBlockCandidateGenerator, SpecBlockTreeConfig
from specblock_hf.target import FeatureTap
from specblock_hf.training.losses import eagle3_loss, specblock_loss, target_signals


def _batch(target, drafter, n=20, seed=0):
    input_ids = torch.randint(3, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))
    tap = FeatureTap(target, drafter.target_layer_ids)
    with tap.attached(), torch.no_grad():
        out = target(input_ids, output_hidden_states=True)
    features = torch.cat(tap.outputs, dim=-1)
    batch = {"input_ids": input_ids, "features": features, "last_hidden": out.hidden_states[-1]}
    signals = target_signals(
        batch["last_hidden"], target.lm_head.weight, torch.arange(drafter.config.draft_vocab_size) + drafter.d2t,
        input_ids, torch.ones_like(input_ids, dtype=torch.bool), torch.full((2,), n),
    )  # fmt: skip
    return batch, signals


def test_specblock_training_blocks_match_inference(monkeypatch):
    """Block 1 at every position equals the inference commit forward; block 2 equals inference's block 2 from a
    leaf at slot M-1 fed the teacher-forced token (fp32)."""
    target = make_target("llama")
    drafter = make_specblock(target)
    K = drafter.block_size
    batch, signals = _batch(target, drafter)
    outputs = []
    real_forward = drafter.forward
    monkeypatch.setattr(drafter, "forward", lambda *a, **k: outputs.append(real_forward(*a, **k)) or outputs[-1])
    M = torch.randint(1, K + 1, (2, 20), generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(torch, "randint", lambda *a, **k: M)
    with torch.no_grad():
        specblock_loss(drafter, batch, signals, num_blocks=2)
    monkeypatch.undo()
    block1, block2 = outputs
    for i in (0, 7, 15):
        generator = SpecBlockCandidateGenerator(drafter, SpecBlockTreeConfig())
        ids = batch["input_ids"][0]
        generator.append(batch["features"][0, : i + 1], ids[1 : i + 2], torch.arange(i + 1))
        torch.testing.assert_close(generator.root_logits[0], block1.logits[0, i], atol=1e-5, rtol=1e-5)
        s = int(M[0, i]) - 1
        S = generator.cache.length
        visible = torch.arange(S)[None] <= S - K + s
        token = ids[i + 1 + s + 1 : i + 3 + s]
        out, _ = generator._draft_block(generator.root_hidden[0, [s]], token, visible, None)
        torch.testing.assert_close(out.logits[0, 0], block2.logits[0, i], atol=1e-5, rtol=1e-5)


def test_eagle3_training_steps_match_inference(monkeypatch):
    """Step 0 equals the inference commit forward, step 1 the inference depth step fed the teacher-forced token."""
    target = make_target("llama")
    drafter = make_eagle3(target)
    batch, signals = _batch(target, drafter)
    outputs = []
    real_forward = drafter.forward
    monkeypatch.setattr(drafter, "forward", lambda *a, **k: outputs.append(real_forward(*a, **k)) or outputs[-1])
    with torch.no_grad():
        eagle3_loss(drafter, batch, signals, num_steps=2)
    monkeypatch.undo()
    step0, step1 = outputs
    ids = batch["input_ids"][0]
    for i in (0, 9, 17):
        generator = Eagle3CandidateGenerator(drafter, Eagle3TreeConfig())
        generator.append(batch["features"][0, : i + 1], ids[1 : i + 2], torch.arange(i + 1))
        torch.testing.assert_close(generator.root_logits[0], step0.logits[0, i], atol=1e-5, rtol=1e-5)
        ancestry = torch.ones(1, 1, dtype=torch.bool)
        out, _ = generator._draft_level(generator.root_hidden, ids[i + 2 : i + 3], 1, ancestry, None)
        torch.testing.assert_close(out.logits[0, 0], step1.logits[0, i], atol=1e-5, rtol=1e-5)


def test_losses_fit_one_batch():
    target = make_target("llama")
    target.lm_head.weight.data *= 3  # a peaked target: its argmax is a learnable label
    target.requires_grad_(False)  # as in the trainer: the borrowed embedding stays frozen
    embedding = target.model.embed_tokens.weight.clone()
    # the full vocabulary as draft vocabulary: every target argmax is reachable
    pairs = (
        (make_specblock(target, draft_vocab=VOCAB), specblock_loss),
        (make_eagle3(target, draft_vocab=VOCAB), eagle3_loss),
    )
    for drafter, loss_fn in pairs:
        batch, signals = _batch(target, drafter, seed=1)
        parameters = [p for name, p in drafter.named_parameters() if not name.startswith("embed_tokens")]
        optimizer = torch.optim.AdamW(parameters, lr=3e-3)
        accuracy = []
        for _ in range(80):
            draft, rank, first = loss_fn(drafter, batch, signals, 2)
            (draft + rank).backward()
            optimizer.step()
            optimizer.zero_grad()
            assert torch.isfinite(draft) and torch.isfinite(rank)
            accuracy.append((first.correct[..., 0].sum() / first.valid[..., 0].sum()).item())
        # the chain mask admits later slots as slot 0 improves, so the summed loss may rise: track accuracy
        assert accuracy[-1] > 0.9 > accuracy[0], accuracy
        assert torch.equal(target.model.embed_tokens.weight, embedding)
