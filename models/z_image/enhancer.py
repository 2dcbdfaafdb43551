"""Prompt enhancer: the loaded Qwen3 text encoder, run as the chat model it is, rewrites a short prompt.

No second model and no extra file: conditioning stops at layer -2 of the same weights, while the enhancer
runs the full model (final norm + the output head tied to the input embedding).
"""

from __future__ import annotations

import re
import time

import torch

from core.errors import UserError

SYSTEM_PROMPT = """You turn a user's image request into one detailed prompt for a text-to-image model.
Rules:
- Keep every core element of the request unchanged: subjects, their number, actions, style, setting.
- When the request implies a design (a poster, a logo, a product, a room), decide a concrete visual plan.
- Add what makes a picture: composition and framing, lighting, materials and textures, colours, mood.
- Any text that must appear in the image goes in double quotes, exactly as it must be written.
- No tag lists and no quality buzzwords such as "8K", "masterpiece" or "best quality".
- Write in plain sentences, at most about 250 words.
Output only the prompt, with no preamble, title or explanation."""

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_thinking(text: str) -> str:
    """Remove any <think>...</think> block (and an unterminated one), quotes and labels around the answer."""
    text = _THINK.sub("", text).replace("</think>", "").strip()
    text = re.sub(r"^(prompt|enhanced prompt)\s*:\s*", "", text, flags=re.IGNORECASE)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def chat_input(tokenizer, prompt: str, thinking: bool) -> torch.Tensor:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=thinking)
    return tokenizer(text, return_tensors="pt").input_ids


def fit_budget(encoder, text: str) -> str:
    """Cut the rewrite at a sentence end so its conditioning fits the encoder's token budget."""
    from models.z_image.text import MAX_TOKENS

    tok = encoder.tokenizer
    while len(tok(encoder.template(text)).input_ids) > MAX_TOKENS:
        cut = max(text.rfind(". ", 0, len(text) - 1), text.rfind(", ", 0, len(text) - 1))
        text = text[: cut + 1] if cut > 0 else text[: int(len(text) * 0.9)]
    return text.strip()


@torch.no_grad()
def enhance(encoder, prompt: str, seed: int, thinking: bool = False, max_new_tokens: int = 400,
            on_token=None) -> str:
    """The rewritten prompt. `on_token(n_tokens, tokens_per_second)` may raise Interrupted to stop.

    Sampling is seeded (same seed, same rewrite) without disturbing the global random state."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, tok = encoder.text_encoder, encoder.tokenizer
    ids = chat_input(tok, prompt, thinking).to(model.device)
    started = time.perf_counter()

    class Report(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            n = input_ids.shape[1] - ids.shape[1]
            if on_token is not None:
                on_token(n, n / max(time.perf_counter() - started, 1e-6))
            return False

    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_p=0.8,
                             top_k=20, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             stopping_criteria=StoppingCriteriaList([Report()]))
    raw = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)  # keep <think> to strip it whole
    text = strip_thinking(re.sub(r"<\|[^|>]*\|>", "", raw))
    if not text:
        raise UserError("the enhancer wrote no usable prompt: try another seed, or turn its thinking off")
    return fit_budget(encoder, text)
