"""Re-decode in fp32 the two bf16 divergences above two ulps from the Spec-Bench T=0 run (q484 SpecBlock, q155 prompt lookup)."""

import torch

import specblock_hf
from specblock_hf.auto import load_drafter
from specblock_hf.bench.main import SPEC_BENCH
from specblock_hf.bench.prompts import load_prompts
from specblock_hf.models import load_target

torch.set_num_threads(1)
prompts = {str(p.question_id): p for p in load_prompts(str(SPEC_BENCH), 8, None)}
for dtype in (torch.float32,):
    target, tok = load_target(dtype=dtype)
    specblock_hf.enable(target)
    for qid, kind, cfg in (
        ("484", "SpecBlock", specblock_hf.SpecBlockTreeConfig(blocks=1, beam=4, budget=4)),
        ("155", None, None),
    ):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompts[qid].text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        plain = target.generate(ids, do_sample=False, max_new_tokens=128)
        if kind:
            d = load_drafter(f"specblock_hf/drafters/SmolLM2-135M-Instruct-{kind}", target=target)
            d.tree_config = cfg
            other = target.generate(ids, do_sample=False, max_new_tokens=128, assistant_model=d)
        else:
            other = target.generate(ids, do_sample=False, max_new_tokens=128, prompt_lookup_num_tokens=10)
        print(
            qid,
            kind or "prompt_lookup",
            dtype,
            "identical" if torch.equal(plain, other) else "DIFFERENT",
            ids.shape[1],
            flush=True,
        )
