"""Sequence (context) parallelism over the video tokens (issue 23): DeepSpeed-Ulysses inside the attention processors.

`enable_sequence_parallel(objective, group)` makes the P ranks of `group`, which hold the SAME batch, split each
sample's video tokens: rank r keeps `tokens` (torch.tensor_split's rule) from the first block to the last, and
every per-token op (AdaLN, FFN, the eraser and its energy record) runs on that shard. Attention mixes tokens:
- self / joint attention (CogVideoX `attn1`, Wan `attn1`): Ulysses. q, k, v of the local tokens, all heads, go
  through an all-to-all to all tokens of H/P heads; the block's own kernel runs on them (CogVideoX: the fused
  kernel with its log-sum-exp, so the mask's capture is unchanged); the output goes back the inverse way.
  Heads must divide by P (refused in one line otherwise).
- Wan's cross-attention `attn2`: nothing to exchange: its keys, the text, are on every rank.
Text tokens (CogVideoX's joint stream) are replicated (Nt = 226 against Nv = 17,550 at 49x480x720): the joint
attention uses the text q/k/v of the rank's H/P heads and all-gathers every rank's heads' text output.

Gradients. A replicated tensor (the text stream) holds on each rank the part of its gradient through that rank's
heads; the true one is the sum over ranks (the text all-gather's backward is a reduce-scatter). A video shard
holds its whole gradient on its owner. The prediction is all-gathered after the output projection (the head is
per token; latent-sized: 1/hidden of an activation; Wan 2.2 TI2V, whose head is modulated by the whole sequence's
per-token timesteps, gathers after the last block) and each rank keeps its slice of the incoming gradient: the
unpatchify and the losses run on the whole prediction on every rank, and `spec.velocity` keeps returning whole
videos (fused step, adversarial inner loop). The capture, the mask, the energy records and the localization loss
hold only this rank's video tokens (a whole capture on every rank was 10 GB per GPU at Wan 2.2 A14B 81x480x832,
4+4 rows, SP 4): Wan's attn2 capture runs on the shard as is; CogVideoX's joint capture sends the kernel's
log-sum-exp of the video queries back to their tokens' owners (all-to-all of [n, H/P, Nv] fp32: H/(P Nt) of the
capture's bytes) and computes the text columns from the local queries of all heads. Reduced: the per-frame
min / max and the mask's counts (`SequenceParallel.localization_mask`, 2 B F + 2 numbers), the loss's shares
(`reduce_sum`, backward identity). So every eraser gradient is the SUM of the group's local gradients:
`scale_gradients` multiplies them by P for an engine that averages over all ranks.

Why Ulysses and not ring attention. Bytes per attention and rank in forward: Ulysses 4 (Nv/P) D (P-1)/P (q, k, v,
out), ring 2 (Nv/P) D (P-1) (k, v around the ring): equal at P = 2, Ulysses half at P = 4. Measured here (`python
benchmarks/sequence_parallel.py`; 2 gloo ranks, 8192 tokens x 8 heads x 64 fp32, load ~45): the same 16.8 MB per
rank took 0.18 s as Ulysses' 4 all-to-alls, 0.08 s as the ring's one send/receive. Ulysses is kept for what that
does not change: it runs the family's own fused kernel on whole sequences (the capture keeps the kernel's
log-sum-exp; loss and eraser gradients equal the single-process ones, tests/test_sequence_parallel.py), where ring
merges P partial log-sum-exps and rescales partial outputs (a second softmax, in backward too); ring's GPU advantage,
overlapping exchange and compute, cannot be measured here. Ulysses needs heads % P == 0 (Wan 14B: 40 heads, 5B: 24,
CogVideoX 2B: 30, 5B: 48); beyond that ring attention is the way (not implemented).
Collectives: the group's ranks run the same blocks in the same order and shapes (checkpoint recomputes too).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from unlearn.attention import attention_with_lse, kernel_inputs, streaming_logsumexp, text_column_probs
from unlearn.masks import localization_mask


def split_sizes(n: int, degree: int) -> list[int]:
    """Tokens per rank, torch.tensor_split's rule: the first n % degree ranks hold one more."""
    return [n // degree + (1 if i < n % degree else 0) for i in range(degree)]


def _all_to_all(flat: torch.Tensor, out_sizes: list[int], in_sizes: list[int], group) -> torch.Tensor:
    out = flat.new_empty(sum(out_sizes))
    dist.all_to_all_single(out, flat.contiguous(), out_sizes, in_sizes, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """[B, H, S_r, d] (all heads, this rank's tokens) -> [B, H/P, S, d] (this rank's heads, all tokens)."""
    b, h, s_r, d = x.shape
    p = len(sizes)
    hp = h // p
    send = x.reshape(b, p, hp, s_r, d).transpose(0, 1).reshape(-1)  # head group j -> rank j
    out = _all_to_all(send, [b * hp * s * d for s in sizes], [b * hp * s_r * d] * p, group)
    return torch.cat([t.view(b, hp, s, d) for t, s in zip(out.split([b * hp * s * d for s in sizes]), sizes)], 2)


def _heads_to_seq(y: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    """The inverse: [B, H/P, S, d] -> [B, H, S_r, d]."""
    b, hp, _, d = y.shape
    p, s_r = len(sizes), sizes[rank]
    send = torch.cat([t.reshape(-1) for t in y.split(sizes, dim=2)])  # token shard j -> rank j
    out = _all_to_all(send, [b * hp * s_r * d] * p, [b * hp * s * d for s in sizes], group)
    return out.view(p, b, hp, s_r, d).transpose(0, 1).reshape(b, p * hp, s_r, d)


def _gather(x: torch.Tensor, sizes: list[int], dim: int, group) -> torch.Tensor:
    """All ranks' pieces of `dim` (uneven: padded to the longest for gloo's all_gather, then cut)."""
    m, own = max(sizes), x.shape[dim]
    if own < m:
        x = torch.cat([x, x.new_zeros((*x.shape[:dim], m - own, *x.shape[dim + 1:]))], dim)
    bufs = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(bufs, x.contiguous(), group=group)
    return torch.cat([t.narrow(dim, 0, s) for t, s in zip(bufs, sizes)], dim)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp, ctx.sizes = sp, list(sp.sizes)
        return _seq_to_heads(x, ctx.sizes, sp.group)

    @staticmethod
    def backward(ctx, g):
        return _heads_to_seq(g, ctx.sizes, ctx.sp.rank, ctx.sp.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, sp):
        ctx.sp, ctx.sizes = sp, list(sp.sizes)
        return _heads_to_seq(y, ctx.sizes, sp.rank, sp.group)

    @staticmethod
    def backward(ctx, g):
        return _seq_to_heads(g, ctx.sizes, ctx.sp.group), None


class _GatherHeads(torch.autograd.Function):
    """[B, H/P, Nt, d] of a replicated stream -> [B, H, Nt, d] on every rank; backward: reduce-scatter (sum)."""

    @staticmethod
    def forward(ctx, y, sp):
        ctx.sp = sp
        return _gather(y, [y.shape[1]] * sp.degree, 1, sp.group)

    @staticmethod
    def backward(ctx, g):
        b, h, nt, d = g.shape
        p = ctx.sp.degree
        send = g.reshape(b, p, h // p, nt, d).transpose(0, 1).reshape(-1)
        out = _all_to_all(send, [send.numel() // p] * p, [send.numel() // p] * p, ctx.sp.group)
        return out.view(p, b, h // p, nt, d).sum(0), None


class _GatherTokens(torch.autograd.Function):
    """This rank's tokens (dim 1) -> all tokens on every rank; backward: this rank's slice (the consumers of
    the gathered tensor are identical replicas, each holding the whole gradient)."""

    @staticmethod
    def forward(ctx, x, sp):
        ctx.tokens = sp.tokens
        return _gather(x, sp.sizes, 1, sp.group)

    @staticmethod
    def backward(ctx, g):
        return g[:, ctx.tokens], None


class _ReduceSum(torch.autograd.Function):
    """Sum of the ranks' partial values (forward all-reduce; backward identity: each rank's part adds once)."""

    @staticmethod
    def forward(ctx, x, sp):
        out = x.detach().clone()
        dist.all_reduce(out, group=sp.group)
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


def _rope_wan(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's 3D RoPE exactly as diffusers' `WanAttnProcessor` applies it (an inline function there)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class UlyssesCogVideoXProcessor:
    """CogVideoX's joint attention over a video shard + the replicated text; wraps the processor it replaces
    (stock or `CapturingCogVideoXAttnProcessor`: its `capture_rows` / `probs` stay what `AttentionCapture` reads)."""

    def __init__(self, inner, sp: "SequenceParallel"):
        self.inner, self.sp = inner, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("sequence parallelism: CogVideoX joint attention with a mask (its blocks pass none)")
        sp, h, b, nt = self.sp, attn.heads, hidden_states.shape[0], encoder_hidden_states.shape[1]
        hp = h // sp.degree

        def heads(x):  # [B, S, H*d] -> q, k, v [B, H, S, d] after the per-head norms, as the stock processor
            q, k, v = (proj(x).unflatten(2, (h, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
            return (attn.norm_q(q) if attn.norm_q is not None else q), (attn.norm_k(k) if attn.norm_k is not None else k), v

        text_all = heads(encoder_hidden_states)
        text = [t[:, sp.rank * hp:(sp.rank + 1) * hp] for t in text_all]  # this rank's heads
        ql, kl, vl = heads(hidden_states)
        if image_rotary_emb is not None:  # per token: on the local tokens, before the exchange (the capture's q too)
            from diffusers.models.embeddings import apply_rotary_emb

            rope = tuple(f[sp.tokens] for f in image_rotary_emb)
            ql = apply_rotary_emb(ql, rope)
            if not attn.is_cross_attention:
                kl = apply_rotary_emb(kl, rope)
        query, key, value = (torch.cat([t, _SeqToHeads.apply(v, sp)], 2) for t, v in zip(text, (ql, kl, vl)))
        out = self._attend(query, key, value, nt, ql, text_all[1])
        out_t, out_v = out.split([nt, out.shape[2] - nt], 2)
        out = torch.cat([_GatherHeads.apply(out_t, sp), _HeadsToSeq.apply(out_v, sp)], 2)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3)))
        return out[:, nt:], out[:, :nt]  # (video, text), as the stock processor returns them

    def _attend(self, query, key, value, nt, q_local, k_text):
        """SDPA on this rank's heads. A capturing call leaves in `inner.probs` this rank's tokens' probabilities
        [n, S_r, Nt], the mean over ALL heads: the kernel's lse of the video queries goes back to their tokens'
        owners and the text columns come from the local queries of all heads and the text keys every rank holds."""
        inner, sp = self.inner, self.sp
        n, scale = getattr(inner, "capture_rows", 0), query.shape[-1] ** -0.5  # SDPA's default scale
        if n and inner.full_matrix:  # the naive reference (benchmarks): the whole matrix, the heads' mean, then the shard
            from unlearn.attention import full_text_probs_reference

            probs = full_text_probs_reference(query[:n, :, nt:].detach(), key[:n].detach(), nt, scale)
            dist.all_reduce(probs, group=sp.group)
            inner.probs = probs[:, sp.tokens] / sp.degree
        if not n or inner.full_matrix:
            return F.scaled_dot_product_attention(query, key, value)
        query, key, value = kernel_inputs(query, key, value)  # what SDPA computes with (autocast: its dtype)
        out, lse = attention_with_lse(query, key, value)
        with torch.no_grad():
            lse = lse[:n, :, nt:] if lse is not None else streaming_logsumexp(
                query[:n, :, nt:].detach(), key[:n].detach(), scale, inner.chunk)
            lse = _heads_to_seq(lse.float().unsqueeze(-1), sp.sizes, sp.rank, sp.group).squeeze(-1)  # [n, H, S_r]
            q, k = kernel_inputs(q_local[:n].detach(), k_text[:n].detach())
            inner.probs = text_column_probs(q, k, scale, lse, inner.chunk)
        return out


class UlyssesWanSelfProcessor:
    """Wan's self-attention `attn1` over a video shard (3D RoPE on the whole sequence, after the all-to-all)."""

    def __init__(self, inner, sp: "SequenceParallel"):
        self.inner, self.sp = inner, sp

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("sequence parallelism: Wan attn1 is self-attention without a mask")
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)  # RMSNorm across heads: per token, before the head split
        # [B, S_r, H, d] -> [B, H, S_r, d] -> all-to-all -> [B, H/P, S, d] -> [B, S, H/P, d] (dispatch's layout)
        q, k, v = (_SeqToHeads.apply(t.unflatten(2, (attn.heads, -1)).transpose(1, 2), self.sp).transpose(1, 2)
                   for t in (q, k, v))
        if rotary_emb is not None:
            q, k = _rope_wan(q, *rotary_emb), _rope_wan(k, *rotary_emb)
        out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                    backend=getattr(self.inner, "_attention_backend", None), parallel_config=None)
        out = _HeadsToSeq.apply(out.transpose(1, 2), self.sp).transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _arg(args, kwargs, i, name):
    return args[i] if len(args) > i else kwargs.get(name)


def _with_arg(args, kwargs, i, name, value):
    if len(args) > i:
        return args[:i] + (value,) + args[i + 1:], kwargs
    return args, {**kwargs, name: value}


class SequenceParallel:
    """The installed state: the group, this rank's place in it and the current token split."""

    def __init__(self, group=None):
        self.group = group
        self.degree, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.sizes: list[int] | None = None
        self._restore: list[tuple] = []  # (module, processor it had, processor set)
        self._hooks: list = []

    @property
    def tokens(self) -> slice:
        """This rank's video tokens in the current split (a slice of the whole sequence)."""
        start = sum(self.sizes[: self.rank])
        return slice(start, start + self.sizes[self.rank])

    def split(self, n: int) -> None:
        if n < self.degree:
            raise ValueError(f"sequence parallelism over {self.degree} ranks needs at least {self.degree} video "
                             f"tokens, the batch has {n}: lower distributed.sequence_parallel")
        self.sizes = split_sizes(n, self.degree)

    def reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over the group of each rank's partial value (a per-shard loss); gradients pass unchanged."""
        return _ReduceSum.apply(x, self)

    def all_reduce_(self, x: torch.Tensor) -> torch.Tensor:
        """In place: the sum over the group of a no-grad tensor each rank holds part of (e.g. a gradient with
        respect to replicated inputs: the adversarial step's embedding gradient)."""
        dist.all_reduce(x, group=self.group)
        return x

    def localization_mask(self, probs, sel, video_grid, threshold) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`unlearn.masks.localization_mask` of this rank's tokens (the capture holds only them; one MIN all-reduce of
        the per-frame [B, F] min and -max), the whole mask's background count and fraction (one all-reduce)."""

        def group_range(lo, hi):
            both = torch.cat([lo, -hi])
            dist.all_reduce(both, op=dist.ReduceOp.MIN, group=self.group)
            return both[: lo.shape[0]], -both[lo.shape[0]:]

        mask, _ = localization_mask(probs, sel, video_grid, threshold, self.tokens, group_range)
        counts = torch.stack([(1.0 - mask).sum(), mask.sum()])
        dist.all_reduce(counts, group=self.group)
        return mask, counts[0], counts[1] / (mask.shape[0] * sum(self.sizes))

    def scale_gradients(self, params) -> None:
        """Multiply each parameter's gradient by P as it is computed: an engine that averages gradients over
        every rank (DeepSpeed) then averages over sample groups the SUM over each group's shards."""
        for p in params:
            self._hooks.append(p.register_hook(lambda g, k=self.degree: g * k))

    def remove(self) -> None:
        """Restore the processors it replaced (where still its own) and remove its hooks. Call it before
        `ErasureObjective.detach()` (which restores the capture's originals)."""
        for module, old, new in reversed(self._restore):
            if module.processor is new:
                module.set_processor(old)
        for hk in self._hooks:
            hk.remove()
        self._restore, self._hooks = [], []


def _block_lists(spec) -> list:
    """Each transformer's block list (both experts of a Wan 2.2 A14B)."""
    roots = getattr(spec.transformer, "experts", (spec.transformer,))
    return [list(getattr(r, "transformer_blocks", None) or r.blocks) for r in roots]


def enable_sequence_parallel(objective, group=None) -> SequenceParallel:
    """Split every forward of `objective.spec.transformer` over the ranks of `group` (default: the world), which
    must all hold the same batch. Call after `ErasureObjective(...)` (the capture's processors are wrapped) and
    after (or before) `shard_backbone`; sets `objective.sequence_parallel`."""
    from unlearn.models.families import base_family

    if not dist.is_initialized():
        raise RuntimeError("sequence parallelism needs an initialised torch.distributed process group")
    sp = SequenceParallel(group)
    cog = base_family(objective.spec.family) == "cogvideox"
    lists = _block_lists(objective.spec)
    for blocks in lists:
        heads = blocks[0].attn1.heads
        if heads % sp.degree:
            raise ValueError(f"distributed.sequence_parallel={sp.degree} must divide the model's {heads} attention "
                             f"heads (Ulysses splits heads over the ranks): use a divisor of {heads}")
        for blk in blocks:
            # Wan's attn2 keeps its processor: its keys, the text, are on every rank, its capture covers the shard
            new = (UlyssesCogVideoXProcessor if cog else UlyssesWanSelfProcessor)(blk.attn1.processor, sp)
            sp._restore.append((blk.attn1, blk.attn1.processor, new))
            blk.attn1.set_processor(new)
    if sp.degree > 1:
        # Where the tokens are gathered: after the output projection (the prediction, latent-sized) where the head is
        # per token; after the last block where the head's modulation is per token and whole (Wan 2.2 TI2V).
        late = not getattr(objective.spec, "expand_timesteps", False)
        roots = getattr(objective.spec.transformer, "experts", (objective.spec.transformer,))
        for root, blocks in zip(roots, lists):
            for i, blk in enumerate(blocks):
                sp._hooks.append(blk.register_forward_pre_hook(_enter_hook(sp, first=i == 0), with_kwargs=True))
            leave = root.proj_out if late else blocks[-1]
            sp._hooks.append(leave.register_forward_hook(_leave_hook(sp, tuple_out=cog and not late)))
    objective.sequence_parallel = sp
    return sp


def _enter_hook(sp: SequenceParallel, first: bool):
    """Block 0: keep this rank's tokens of the whole sequence. Every block: a per-token time embedding
    (Wan 2.2 TI2V: [B, Nv, 6, D]) is cut to the same tokens."""

    def hook(module, args, kwargs):
        if first:
            x = _arg(args, kwargs, 0, "hidden_states")
            sp.split(x.shape[1])
            args, kwargs = _with_arg(args, kwargs, 0, "hidden_states", x[:, sp.tokens])
        temb = _arg(args, kwargs, 2, "temb")
        if temb is not None and temb.dim() == 4 and temb.shape[1] == sum(sp.sizes):
            args, kwargs = _with_arg(args, kwargs, 2, "temb", temb[:, sp.tokens])
        return args, kwargs

    return hook


def _leave_hook(sp: SequenceParallel, tuple_out: bool):
    """After the output projection (or the last block): the video tokens of all ranks, in order, on every rank."""

    def hook(module, args, output):
        if tuple_out:  # CogVideoX: (video, text)
            return (_GatherTokens.apply(output[0], sp), *output[1:])
        return _GatherTokens.apply(output, sp)

    return hook


def enable_for_workers(objective, degree: int, params) -> SequenceParallel | None:
    """The training worker's hook point (`pipelines/train/worker.py`, after the session, before the engine): groups
    of `degree` consecutive ranks (every rank creates every group, as torch.distributed requires), this rank's
    group split, and the eraser gradients `params` scaled by the degree for the engine's mean over all ranks."""
    if degree <= 1:
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for start in range(0, world, degree):
        group = dist.new_group(list(range(start, start + degree)))
        mine = group if start <= rank < start + degree else mine
    sp = enable_sequence_parallel(objective, mine)
    sp.scale_gradients(params)
    return sp
