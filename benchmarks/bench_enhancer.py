"""Enhancer benchmark: tokens per second on the small benchmark encoder, and resident memory with the
enhancer vs conditioning only (target: at most 5% more, i.e. the KV cache; no second copy of the weights).

Prints a table and one JSON line. Run: python benchmarks/bench_enhancer.py [--device cpu|cuda] [--tokens 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.child import child_json  # noqa: E402


def write_encoder(folder: Path) -> Path:
    from safetensors.torch import save_file

    from models.z_image import tiny

    # Qwen3-4B's proportions (head_dim 128, 4 query heads per KV head, MLP 3.8x wide), so the KV cache per
    # token weighs about what it does next to the real model's weights (1.5x the real share; 2:1 GQA and a 2x
    # MLP would make it 4x).
    model = tiny.make_text_encoder(hidden=1024, layers=8, heads=8, kv_heads=2, vocab=32000, intermediate=3840)
    save_file(tiny.state_dict_for_file(model), str(folder / "te.safetensors"))
    return folder / "te.safetensors"


def probe(mode: str, device: str, tokens: int, path: str) -> dict:
    """Child process: load the encoder, condition (and enhance); report peak memory growth over the
    process's memory after imports (the kernel's peak counter is reset there)."""
    import time

    import torch
    from transformers import Qwen3ForCausalLM  # noqa: F401  (imports are not what is measured)

    from engine.errors import UserError
    from models.z_image import loader, tiny
    from models.z_image.enhancer import chat_input, enhance
    from models.z_image.text import PromptEncoder
    from engine.placement.memory import _kernel_peak, _reset_kernel_peak, current_rss

    tok = tiny.make_tokenizer()
    _reset_kernel_peak()
    base = current_rss() // 1024
    te = loader.load_text_encoder(Path(path), torch.float32).to(device)
    sum(float(p.sum()) for p in te.parameters())  # all weights resident, as on a GPU, in both modes
    enc = PromptEncoder(te, tok)
    enc.encode(["a lighthouse on a cliff at dusk"])
    after_conditioning = _kernel_peak() // 1024
    rate = 0.0
    if mode == "enhance":
        rates = []
        t0 = time.perf_counter()
        try:
            enhance(enc, "a lighthouse on a cliff at dusk", seed=1, max_new_tokens=tokens,
                    on_token=lambda n, r: rates.append(n))
        except UserError:
            pass  # random weights write no usable text; speed and memory are what is measured
        rate = rates[-1] / (time.perf_counter() - t0)
    peak = _kernel_peak() // 1024
    weights = sum(p.numel() * p.element_size() for p in te.parameters())
    cfg, prompt_len = te.config, chat_input(tok, "a lighthouse on a cliff at dusk", False).shape[1]
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4 * (prompt_len + tokens)
    return {"kv_cache_bytes": kv, "prompt_tokens": prompt_len,"growth_kb": (peak if mode == "enhance" else after_conditioning) - base,
            "conditioning_kb": after_conditioning - base, "tokens_per_s": rate,
            "weights_bytes": weights, "tied": te.lm_head.weight.data_ptr() == te.model.embed_tokens.weight.data_ptr()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=200)
    args = ap.parse_args()
    import tempfile

    path = write_encoder(Path(tempfile.mkdtemp()))
    runs = {}
    for mode in ("condition", "enhance"):
        runs[mode] = child_json(__file__, "--probe", mode, args.device, str(args.tokens), str(path))
    cond, enh = runs["condition"]["growth_kb"], runs["enhance"]["growth_kb"]
    ratio = enh / cond
    print(f"\nEnhancer benchmark: Qwen3-shaped encoder (1024 wide, 8 layers, "
          f"{runs['enhance']['weights_bytes'] / 2**20:.0f} MiB of weights), {args.device}, {args.tokens} tokens\n")
    print(f"{'measure':<52}{'value':>16}{'target':>12}")
    print(f"{'enhancer speed':<52}{runs['enhance']['tokens_per_s']:>12.1f} t/s{'':>12}")
    print(f"{'peak memory growth, conditioning only':<52}{cond / 1024:>12.1f} MiB{'':>12}")
    print(f"{'peak memory growth, conditioning + enhancing':<52}{enh / 1024:>12.1f} MiB{'':>12}")
    kv = runs["enhance"]["kv_cache_bytes"] / 2**20
    print(f"{'  of which KV cache (' + str(runs['enhance']['prompt_tokens']) + ' + ' + str(args.tokens) + ' tokens)':<52}"
          f"{kv:>12.1f} MiB{'':>12}")
    print(f"{'enhancer / conditioning-only memory':<52}{ratio:>15.3f}x{'<= 1.05x':>12}")
    print(f"{'output head tied to input embedding (no copy)':<52}{str(runs['enhance']['tied']):>16}{'True':>12}")
    print(json.dumps({"bench": "enhancer", "tokens_per_s": round(runs["enhance"]["tokens_per_s"], 2),
                      "memory_ratio": round(ratio, 4), "conditioning_mib": round(cond / 1024, 1),
                      "enhance_mib": round(enh / 1024, 1), "kv_cache_mib": round(kv, 1), "tied": runs["enhance"]["tied"]}))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    else:
        main()
