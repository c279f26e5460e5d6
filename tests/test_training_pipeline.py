"""`specblock train` end to end on a tiny target: data -> vocab -> features -> training -> a loadable drafter."""

import json

import pytest
import torch
from conftest import make_target
from test_training_data import make_chatml_tokenizer

import specblock_hf
from specblock_hf.cli import main
from specblock_hf.training.trainer import TrainConfig


@pytest.fixture
def tiny_world(tmp_path):
    target_dir = tmp_path / "target"
    make_target("llama").save_pretrained(target_dir)
    make_chatml_tokenizer().save_pretrained(target_dir)
    rng = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    with open(tmp_path / "chat.jsonl", "w") as handle:
        for index in range(12):
            pick = torch.randint(0, len(words), (6,), generator=rng).tolist()
            question, answer = " ".join(words[i] for i in pick[:3]), " ".join(words[i] for i in pick[3:])
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer * 2}]
            handle.write(json.dumps({"id": index, "messages": messages}) + "\n")
    return tmp_path, target_dir


@pytest.mark.parametrize("drafter", ["specblock", "eagle3"])
def test_train_cli_writes_a_drafter_that_decodes_losslessly(tiny_world, drafter):
    tmp_path, target_dir = tiny_world
    config = {
        "data": str(tmp_path / "chat.jsonl"), "features_dir": str(tmp_path / "features"),
        "output_dir": str(tmp_path / drafter), "drafter": drafter, "target": str(target_dir), "max_length": 64,
        "draft_vocab_size": 32, "drafter_config": {"intermediate_size": 64}, "blocks": 2, "batch_size": 2,
        "max_steps": 4, "warmup_steps": 1, "eval_sequences": 2, "eval_every": 2, "save_every": 2, "log_every": 1,
        "mixed_precision": "no", "train_window": 12 if drafter == "specblock" else None,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    main(["train", "--config", str(tmp_path / "config.json")])
    final = tmp_path / drafter / "final"
    assert {"config.json", "model.safetensors", "README.md", "training_summary.json"} <= {
        p.name for p in final.iterdir()
    }
    assert (tmp_path / drafter / "checkpoint-4").is_dir()
    log = [json.loads(line) for line in (tmp_path / drafter / "train_log.jsonl").read_text().splitlines()]
    assert any("eval" in record for record in log) and log[-1]["step"] == 4

    target = specblock_hf.enable(make_target("llama"))
    loaded = specblock_hf.load_drafter(str(final), target=target)
    prompt = torch.randint(3, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    expected = target.generate(prompt, do_sample=False, max_new_tokens=16, eos_token_id=None)
    assert torch.equal(
        target.generate(prompt, do_sample=False, max_new_tokens=16, eos_token_id=None, assistant_model=loaded), expected
    )

    # resuming a finished run trains no further step
    main(["train", "--config", str(tmp_path / "config.json")])
    log = [json.loads(line) for line in (tmp_path / drafter / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4


def test_train_config_validates():
    with pytest.raises(ValueError, match="drafter must be"):
        TrainConfig(data="x", features_dir="f", output_dir="o", drafter="medusa")


def test_distill_cli_writes_and_resumes(tiny_world):
    tmp_path, target_dir = tiny_world
    out = tmp_path / "distilled.jsonl"
    command = ["distill", "--data", str(tmp_path / "chat.jsonl"), "--out", str(out), "--target", str(target_dir)]
    command += ["--limit", "3", "--max-new-tokens", "5", "--batch-size", "2"]
    main(command)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(row["messages"][-1]["role"] == "assistant" for row in rows)
    main(command)
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("drafter", ["specblock", "eagle3"])
def test_new_drafter_starts_from_the_targets_head_rows_and_final_norm(drafter):
    from specblock_hf.training.trainer import new_drafter

    target = make_target("llama")
    target.model.norm.weight.data.uniform_(0.5, 2.0)  # not the all-ones a fresh norm has
    used = torch.arange(3, 259, 2)[:40]  # 40 target ids of the draft vocabulary
    config = TrainConfig(data="x", features_dir="x", output_dir="x", drafter=drafter, drafter_config={"intermediate_size": 64}, init_from_target=True)  # fmt: skip
    model = new_drafter(config, target, used)
    assert torch.equal(model.lm_head.weight, target.lm_head.weight[used])
    assert torch.equal(model.norm.weight, target.model.norm.weight)
    fresh = new_drafter(TrainConfig(**{**config.__dict__, "init_from_target": False}), target, used)  # the default
    assert not torch.equal(fresh.lm_head.weight, target.lm_head.weight[used])
