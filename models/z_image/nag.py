"""NAG (Normalized Attention Guidance, arXiv 2505.21179): negative prompts for distilled Z-Image models.

On diffusers' ZImageTransformer2DModel, for the duration of a guided pass:
- the refined negative caption is appended to the unified sequence as a third segment, [image, positive
  caption, negative caption] per sample (a small override of `_build_unified_sequence`, the one place
  attention processors cannot reach). It takes caption positions on the positive caption's axis, ending
  where the positive caption ends (right before the image, where every caption ends), so image tokens keep
  the positions they have without NAG and Z- is exactly the attention a forward pass with the negative in
  the caption slot computes (RoPE only sees relative positions). With equal token counts the negative gets
  the positive's positions one for one (as Wan2GP, which cuts the negative to that length); a longer
  negative is never cut: its first tokens continue the numbering below 1.
- every main layer's attention processor computes Z+ (attention over [image, positive] only) and Z-
  (over [image, negative] only), guides the image and positive-caption outputs (`nag_guidance`; a caption
  token is paired with the negative token at its position), and lets the negative tokens keep Z-, so the
  negative stream evolves through the layers. Refiner layers are untouched; control blocks that run beside
  the main layers (on the same unified sequence) are guided as main layers are.
The negative caption goes through the caption embedder and the context refiner once per generation, not
every step: both have no time input (the context refiner has no adaLN), so their output for a caption is
the same at every step, and the refiner's attention sees only caption tokens, so the shift of positions
above does not change it. It is padded as the positive caption is (to a multiple of 32, learned pad token).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.nn.utils.rnn import pad_sequence


def nag_guidance(z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float) -> torch.Tensor:
    """Per token: G = Z+ + (s - 1)(Z+ - Z-); where ||G||_1 / ||Z+||_1 > tau, G *= tau / ratio;
    out = alpha * G + (1 - alpha) * Z+. z_pos, z_neg: [..., channels]; norms over channels, in float32."""
    pos, neg = z_pos.float(), z_neg.float()
    guided = pos + (scale - 1) * (pos - neg)
    limit = tau * pos.abs().sum(-1, keepdim=True)
    norm = guided.abs().sum(-1, keepdim=True)
    guided = torch.where(norm > limit, guided * (limit / norm), guided)
    return (alpha * guided + (1 - alpha) * pos).to(z_pos.dtype)


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D] rotated by complex freqs [B, L, D/2], as diffusers' Z-Image processor does it."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs.unsqueeze(2)).flatten(3).type_as(x)


@dataclass
class _PassState:
    """What one guided pass shares between the sequence override and the processors."""

    negative: torch.Tensor  # [Ln, dim] refined negative caption
    rope: object = None  # the transformer's RopeEmbedder
    segments: list = field(default_factory=list)  # per sample (image, positive, negative) token counts


def caption_freqs(rope, positions: torch.Tensor) -> torch.Tensor:
    """RoPE freqs [n, head_dim / 2] for caption tokens at (p, 0, 0); p may be negative (a conjugate rotation)."""
    ids = torch.zeros(len(positions), 3, dtype=torch.long, device=positions.device)
    ids[:, 0] = positions.abs()
    freqs = rope(ids)
    return torch.where((positions < 0)[:, None], freqs.conj(), freqs)


class NAGAttnProcessor:
    """Attention with NAG. Inputs as diffusers' ZSingleStreamAttnProcessor; hidden_states [B, L, dim] hold
    each sample's [image, positive caption, negative caption] tokens (then batch padding). On a shorter
    sequence (a control block beside the noise refiner sees image tokens only) the original processor runs."""

    def __init__(self, nag: "NegativeAttentionGuidance", state: _PassState, original=None):
        self.nag, self.state, self.original = nag, state, original
        self.backend = getattr(original, "_attention_backend", None)
        self.parallel_config = getattr(original, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        segments = self.state.segments
        if not segments or hidden_states.shape[1] < max(map(sum, segments)):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis)
        q, k, v = (proj(hidden_states).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q, k = _rope(q, freqs_cis), _rope(k, freqs_cis)
        if len(set(segments)) == 1:  # the usual case: one computation for the whole batch
            out = self._guided(q, k, v, *segments[0])
        else:
            out = pad_sequence([self._guided(q[i:i + 1], k[i:i + 1], v[i:i + 1], *seg)[0]
                                for i, seg in enumerate(segments)], batch_first=True)
        length = hidden_states.shape[1]
        out = torch.nn.functional.pad(out, (0, 0, 0, length - out.shape[1]))
        out = attn.to_out[0](out.to(q.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out

    def _attend(self, q, k, v):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        out = dispatch_attention_fn(q, k, v, backend=self.backend, parallel_config=self.parallel_config)
        return out.flatten(2, 3)

    def _guided(self, q, k, v, n_img: int, n_pos: int, n_neg: int) -> torch.Tensor:
        """[b, >= n_img + n_pos + n_neg, H, D] -> [b, n_img + n_pos + n_neg, H * D] (before the output proj).

        Both captions end at the same position, so positive token j pairs with negative token
        j - (n_pos - n_neg); positive tokens before a shorter negative starts keep Z+.
        """
        end_pos = n_img + n_pos
        z_pos = self._attend(q[:, :end_pos], k[:, :end_pos], v[:, :end_pos])
        neg = torch.cat([torch.arange(n_img), torch.arange(end_pos, end_pos + n_neg)]).to(q.device)
        z_neg = self._attend(q[:, neg], k[:, neg], v[:, neg])
        guide = partial(nag_guidance, scale=self.nag.scale, tau=self.nag.tau, alpha=self.nag.alpha)
        first_pos, first_neg, paired = max(n_pos - n_neg, 0), max(n_neg - n_pos, 0), min(n_pos, n_neg)
        caption = z_pos[:, n_img + first_pos:end_pos]
        caption = guide(caption, z_neg[:, n_img + first_neg:n_img + first_neg + paired])
        return torch.cat([guide(z_pos[:, :n_img], z_neg[:, :n_img]), z_pos[:, n_img:n_img + first_pos], caption,
                          z_neg[:, n_img:]], dim=1)


def _build_with_negative(build, state: _PassState, x, x_freqs, x_seqlens, x_noise_mask, cap, cap_freqs,
                         cap_seqlens, *rest):
    """diffusers' unified-sequence builder, given each sample's caption with the negative appended (its
    positions end where that sample's caption ends)."""
    n_neg = len(state.negative)
    caps = [torch.cat([cap[i][:n], state.negative.to(cap.dtype)]) for i, n in enumerate(cap_seqlens)]
    ends = {n: caption_freqs(state.rope, torch.arange(n - n_neg + 1, n + 1, device=cap.device))
            for n in set(cap_seqlens)}
    freqs = [torch.cat([cap_freqs[i][:n], ends[n].to(cap_freqs.dtype)]) for i, n in enumerate(cap_seqlens)]
    state.segments = [(nx, nc, n_neg) for nx, nc in zip(x_seqlens, cap_seqlens)]
    return build(x, x_freqs, x_seqlens, x_noise_mask, pad_sequence(caps, batch_first=True),
                 pad_sequence(freqs, batch_first=True), [n + n_neg for n in cap_seqlens], *rest)


class NegativeAttentionGuidance:
    """NAG for one generation: the negative caption (refined once, on first use) and the parameters.

    `wrap(model_fn, schedule)` returns a model_fn that runs the transformer with NAG on the steps inside
    [start, end) (fractions of the steps), whatever model_fn does around its transformer calls.
    `extra_blocks` are more blocks that attend over the unified sequence in the same pass (control blocks):
    guided alike, so the negative caption's tokens get the control hint a pass with the negative in the
    caption slot would give them.
    """

    def __init__(self, transformer, negative: torch.Tensor, scale: float, tau: float, alpha: float,
                 start: float = 0.0, end: float = 1.0, extra_blocks=()):
        self.transformer = transformer
        self.extra_blocks = list(extra_blocks)
        self.negative_features = negative  # [tokens, caption features] from the text encoder
        self.scale, self.tau, self.alpha, self.start, self.end = scale, tau, alpha, start, end
        self._refined = None
        self.guided_passes = 0  # for tests and the benchmark

    def refined(self) -> torch.Tensor:
        """The negative [Ln, dim] after the caption embedder and context refiner."""
        if self._refined is None:
            self._refined = refine_caption(self.transformer, self.negative_features)[0]
        return self._refined

    @contextmanager
    def applied(self):
        """Within the block, every transformer pass is NAG-guided."""
        tr = self.transformer
        state = _PassState(self.refined(), tr.rope_embedder)
        layers = [block.attention for block in [*tr.layers, *self.extra_blocks]]
        originals = [attn.processor for attn in layers]
        own_build = tr.__dict__.get("_build_unified_sequence")
        tr._build_unified_sequence = partial(_build_with_negative, tr._build_unified_sequence, state)
        for attn, original in zip(layers, originals):
            attn.set_processor(NAGAttnProcessor(self, state, original))
        try:
            yield
            self.guided_passes += 1
        finally:
            for attn, original in zip(layers, originals):
                attn.set_processor(original)
            if own_build is None:
                del tr._build_unified_sequence
            else:
                tr._build_unified_sequence = own_build

    def wrap(self, model_fn, schedule: torch.Tensor):
        """model_fn(x, time, *rest) with NAG on the covered steps; `schedule` is the sampler's descending
        sigmas or times, used to tell which step a call belongs to."""
        from engine.sampling.windows import StepWindow

        window = StepWindow(self.start, self.end)

        def guided(x, time, *rest):
            if not window.covers_call(schedule, time):
                return model_fn(x, time, *rest)
            with self.applied():
                return model_fn(x, time, *rest)

        return guided


@torch.no_grad()
def refine_caption(transformer, feats: torch.Tensor):
    """One caption [tokens, caption features] -> ([Lp, dim], RoPE freqs [Lp, head_dim / 2]) through the same
    padding, caption embedder and context refiner as diffusers' forward uses for the positive caption."""
    from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF

    device = feats.device  # where the pipeline runs the model (its inputs' device, as diffusers' forward)
    padded = len(feats) + (-len(feats)) % SEQ_MULTI_OF
    feats, pos_ids, pad_mask, _, _ = transformer._pad_with_ids(feats, (padded, 1, 1), (1, 0, 0), device)
    seq, freqs, mask, _, _ = transformer._prepare_sequence(
        [transformer.cap_embedder(feats)], [pos_ids], [pad_mask], transformer.cap_pad_token, None, device)
    for layer in transformer.context_refiner:
        seq = layer(seq, mask, freqs)
    return seq[0], freqs[0]
