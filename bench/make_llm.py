"""Build the LLM-shaped checkpoints `bench_diff.py` compares (about 9 GB of disk).

In `$CKPTTOOL_BENCH_DIR` (default /tmp/ckpttool-bench):
- llm.pt: a ~3 GB float32 decoder state_dict saved with torch.save: 16 layers of attention
  (grouped K/V, Q/K/V biases), MLP and norms, a 32,000 x 1,024 embedding (131 MB, the
  largest tensor) and `lm_head.weight` tied to it (one storage, two keys) - 194 tensors;
- llm.safetensors: the same tensors, the tied one stored under both keys;
- llm_plus1.safetensors: every tensor + 1, so every value differs.

Delete the folder afterwards: `python bench/make_llm.py --clean`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

LLM_DIR = Path(os.environ.get("CKPTTOOL_BENCH_DIR", "/tmp/ckpttool-bench"))
VOCAB, HIDDEN, KV, MLP, LAYERS = 32_000, 1_024, 256, 13_696, 16


def layer_shapes() -> dict[str, tuple[int, ...]]:
    return {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.q_proj.bias": (HIDDEN,),
        "self_attn.k_proj.weight": (KV, HIDDEN),
        "self_attn.k_proj.bias": (KV,),
        "self_attn.v_proj.weight": (KV, HIDDEN),
        "self_attn.v_proj.bias": (KV,),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (MLP, HIDDEN),
        "mlp.up_proj.weight": (MLP, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, MLP),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }


def state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=generator)}
    for i in range(LAYERS):
        for name, shape in layer_shapes().items():
            state[f"model.layers.{i}.{name}"] = torch.randn(shape, generator=generator) * 0.02
    state["model.norm.weight"] = torch.ones(HIDDEN)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied, as most small LLMs
    return state


def untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared tensors: the tied key gets its own copy."""
    return {**state, "lm_head.weight": state["lm_head.weight"].clone()}


def main() -> None:
    if "--clean" in sys.argv:
        shutil.rmtree(LLM_DIR, ignore_errors=True)
        return
    LLM_DIR.mkdir(parents=True, exist_ok=True)
    if not (LLM_DIR / "llm_plus1.safetensors").exists() or "--force" in sys.argv:
        state = state_dict()
        torch.save(state, LLM_DIR / "llm.pt")
        save_file(untied(state), LLM_DIR / "llm.safetensors")
        for key, tensor in state.items():
            if key != "lm_head.weight":  # the tied key moves with the embedding
                tensor.add_(1)
        save_file(untied(state), LLM_DIR / "llm_plus1.safetensors")
    for path in sorted(LLM_DIR.glob("*")):
        print(f"{path.name:24s} {path.stat().st_size / 1e9:6.2f} GB")


if __name__ == "__main__":
    main()
