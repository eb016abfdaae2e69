"""The one place that applies pruning decisions to a decoder stack.

The runtime replaces the ``forward`` of a model's language model (the decoder-only stack) with
:meth:`Runtime.forward`, which runs the same layers in the same order (readable in one sitting, as the
model's own forward) and, at each decision point of the method:

1. hands the method one sample's visual tokens (hidden states, frame/slot layout, on-demand relevance
   from that layer's own query/key projections and rotary embedding);
2. drops the tokens it removed from the hidden states, the rotary cos/sin (so kept tokens keep their
   original positions), the text position ids and any per-token side inputs, re-packing the batch with
   left padding so every sample keeps its own tokens;
3. records, in a :class:`PrunedCache`, which keys of each layer are padding.

Decoding steps reuse the per-layer caches: new tokens take the positions ``generate`` gives them (which
continue from the original, unpruned length) and attend to every stored key of each layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from hieravid.flops import ModelShape
from hieravid.methods.base import Decision, PruningMethod, VideoTokens
from hieravid.models.base import CallContext, ModelAdapter, VideoLayout
from hieravid.ops import attention_from_queries
from hieravid.runtime.cache import PrunedCache
from hieravid.runtime.compat import CACHE_ARG, cache_of, text_model_output
from hieravid.runtime.masks import attention_mask
from hieravid.runtime.stats import FlopsCount, PruneStats, count_flops
from hieravid.runtime.trace import PruneTrace, SampleTrace, StageTrace
from hieravid.warning import HieravidWarning

__all__ = ["Runtime", "device_clock"]


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has finished its queued work. On CUDA the layers run
    asynchronously: without the wait, a decision's first read of a tensor would wait for every layer
    queued before it, and that time would be charged to deciding (and its own queued work to the
    layers after it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _per_row(
    rope_pos: torch.Tensor, text_pos: torch.Tensor | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions with one row per sample: ``(..., B, N)`` rotary and ``(B, N)`` text positions, from
    positions given once for the whole batch (``(..., 1, N)``, which the model itself broadcasts)."""
    rope_pos = rope_pos.expand(*rope_pos.shape[:-2], batch, rope_pos.shape[-1])
    return rope_pos, None if text_pos is None else text_pos.expand(batch, text_pos.shape[-1])


@dataclass
class _Sequence:
    """The batch as it currently flows through the decoder. L = current (re-padded) length."""

    index: torch.Tensor  # (B, L) original position of each column
    valid: torch.Tensor  # (B, L) bool, False at padding
    hidden: torch.Tensor  # (B, L, D)
    cos: torch.Tensor  # (B, L, d_h) rotary cos of each column's original position
    sin: torch.Tensor  # (B, L, d_h)
    text_pos: torch.Tensor | None  # (B, L) position ids the layers receive, if any
    side: list[torch.Tensor]  # per-token side inputs, each (B, L, D)

    def gather(self, cols: torch.Tensor, valid: torch.Tensor) -> "_Sequence":
        """Keep columns ``cols`` (B, L') of every per-token tensor."""

        rows = torch.arange(cols.shape[0], device=cols.device)[:, None]  # (B, 1)

        def take(t: torch.Tensor) -> torch.Tensor:
            return t[rows, cols]  # (B, L', ...): one index per row, not one per element as gather reads

        return _Sequence(
            index=take(self.index),
            valid=valid,
            hidden=take(self.hidden),
            cos=take(self.cos),
            sin=take(self.sin),
            text_pos=None if self.text_pos is None else take(self.text_pos),
            side=[take(s) for s in self.side],
        )


def _group_mean(values: torch.Tensor, keep: torch.Tensor, merge_into: torch.Tensor) -> torch.Tensor:
    """Mean of every kept token with the removed tokens merged into it: ``(N, D) -> (N_kept, D)``."""
    row = torch.full_like(merge_into, -1)
    kept = torch.nonzero(keep).squeeze(1)
    row[kept] = torch.arange(kept.numel(), device=keep.device)
    removed = torch.nonzero(~keep & (merge_into >= 0)).squeeze(1)
    target = row[merge_into[removed]]
    sums = values[kept].float()
    sums.index_add_(0, target, values[removed].float())
    counts = torch.ones(kept.numel(), device=values.device).index_add_(
        0, target, torch.ones(removed.numel(), device=values.device)
    )
    return (sums / counts.unsqueeze(1)).to(values.dtype)


def _right_align(keep: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns to gather so that each row's kept columns end the row, in order (left padding).

    Returns ``cols (B, L')`` and ``valid (B, L')`` with L' = ``width``, the largest kept count (read from
    the device when not given)."""
    if width is None:
        width = int(keep.sum(dim=1).max())
    order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)  # dropped first, kept last, in order
    cols = order[:, order.shape[1] - width:]
    return cols, keep.gather(1, cols)


_ENCODINGS_KEPT = 4  # video encodings whose grids a thread remembers


def _same_encoding(given: Any, kept: Any) -> bool:
    """Whether the encoder output a call was ``given`` is the one ``kept`` from an encoding: the same
    object, or a copy holding the same features. accelerate's hooks rebuild every mapping a dispatched
    model's forward is passed (``mm_encoder_outputs`` and the output inside), keeping its tensors, or
    moving them to the execution device."""
    if kept is None:
        return False
    if given is kept:
        return True
    ours, theirs = getattr(given, "pooler_output", None), getattr(kept, "pooler_output", None)
    ours = (ours,) if isinstance(ours, torch.Tensor) else ours
    theirs = (theirs,) if isinstance(theirs, torch.Tensor) else theirs
    if not isinstance(ours, (tuple, list)) or not isinstance(theirs, (tuple, list)) or len(ours) != len(theirs):
        return False
    return all(
        isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and (
            a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.to(b.device), b))
        )
        for a, b in zip(ours, theirs)
    )


class _CallState(threading.local):
    """What a model call carries from its start to its decoder, one per thread: a model served from several
    threads (each its own ``generate``) runs each call with its own inputs, as without hieravid."""

    def __init__(self) -> None:
        self.context: CallContext | None = None  # arguments of the current multimodal call
        # The outer model call's ``logits_to_keep`` (positions its LM head runs on; None: no LM head).
        self.logits_to_keep: int | torch.Tensor | None = None
        # The last few video encodings' small arguments (the grid, never the pixels), each with a weak
        # reference to the encoder output it produced: a call given that output (``generate`` encodes
        # before its first forward, a user may encode once and ask twice) reads its grid from there.
        self.encodings: list[tuple[weakref.ref, dict[str, Any]]] = []
        # The cache filled by the last call this thread reported: its later steps (this thread's
        # decoding loop) keep the report, whatever other threads prefilled meanwhile.
        self.described: weakref.ref | None = None


def _this_thread(name: str) -> property:
    return property(lambda self: getattr(self._call, name), lambda self, value: setattr(self._call, name, value))


class Runtime:
    """Applies a method's decisions inside one model's decoder. Created by :func:`hieravid.apply`.

    With ``trace=True`` every prefill also leaves a :class:`PruneTrace` in ``last_trace`` (the decisions
    token by token); with ``trace=False`` nothing is recorded and ``last_trace`` stays None. ``last_stats``
    and ``last_trace`` are the last prefill's, whichever thread ran it (``generate`` run in a thread behind a
    streamer, read in another); a call's inputs are kept per thread.
    """

    context = _this_thread("context")
    logits_to_keep = _this_thread("logits_to_keep")
    _encodings = _this_thread("encodings")
    _described = _this_thread("described")

    def __init__(self, adapter: ModelAdapter, method: PruningMethod, trace: bool = False) -> None:
        self.adapter = adapter
        self.method = method
        self.trace = trace
        self._call = _CallState()
        # The last prefill's stats and trace, set together: a pair from one call, whatever other threads do.
        self._last: tuple[PruneStats | None, PruneTrace | None] = (None, None)
        # The layers the model runs (its module list), whatever its config says: a decoder cut short in
        # place runs fewer.
        self._shape = dataclasses.replace(ModelShape.from_config(adapter.text_config), num_layers=adapter.num_layers)

    @property
    def last_stats(self) -> PruneStats | None:
        return self._last[0]

    @property
    def last_trace(self) -> PruneTrace | None:
        return self._last[1]

    # ------------------------------------------------------------------------------------ dispatch
    def forward(
        self,
        text_model: torch.nn.Module,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Drop-in replacement of the language model's ``forward`` (same arguments, same output type;
        transformers 5.24 and later pass the cache as ``cache``)."""
        try:
            self.adapter.check_attention()  # a model switched since apply
            return self._forward(text_model, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                 use_cache, **kwargs)
        finally:
            # The model call's arguments are used up. Its hooks forget them after its forward too, but torch
            # skips those for a KeyboardInterrupt (Ctrl-C mid-prefill): a later call of the language model
            # alone must not find them.
            self.forget_call()

    def forget_call(self) -> None:
        """Drop what this thread's model call left for its decoder: its arguments (the pixels among them)
        and its ``logits_to_keep``."""
        self.context = None
        self.logits_to_keep = None

    def _forward(
        self,
        text_model: torch.nn.Module,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_key_values: Any,
        inputs_embeds: torch.Tensor | None,
        use_cache: bool | None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        original = type(text_model).forward
        if CACHE_ARG in kwargs:
            past_key_values = kwargs.pop(CACHE_ARG)
        call = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, use_cache=use_cache, **{CACHE_ARG: past_key_values}, **kwargs,
        )
        prepared = isinstance(attention_mask, dict) or (torch.is_tensor(attention_mask) and attention_mask.dim() == 4)
        if prepared or (past_key_values is not None and not isinstance(past_key_values, DynamicCache)):
            raise ValueError(
                "hieravid needs the default dynamic cache and a 2-D attention mask: static and compiled caches "
                "(and the 4-D masks prepared for them) cannot hold layers that keep different numbers of tokens; "
                "generate without cache_implementation, or pass a DynamicCache"
            )
        if inputs_embeds is None:
            inputs_embeds = text_model.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = text_model.config.use_cache
        layouts = self._layouts(*inputs_embeds.shape[:2])
        has_video = any(layout is not None for layout in layouts)
        if isinstance(past_key_values, PrunedCache) and past_key_values.virtual_length > 0:
            if has_video:
                raise ValueError(
                    "this call adds a new video after a pruned prefill; hieravid prunes one video per "
                    "conversation turn started without a cache: run the new turn from the full prompt"
                )
            return self._decode(text_model, inputs_embeds, attention_mask, position_ids, past_key_values, kwargs)
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        continues = past > 0
        if continues and not has_video:  # a decoding step, or a text-only turn, after an unpruned prefill
            if self._described is None or self._described() is not past_key_values:
                # Not a step of the call last_stats describes: a text-only call of its own.
                stats = self._passthrough_stats(inputs_embeds, attention_mask, layouts, past)
                self._describe(stats, layouts, past_key_values)
            return original(text_model, **call)
        if continues or not has_video:
            if continues:
                # Pruning needs the whole prompt in one prefill: the cached prefix's layers hold every token.
                warnings.warn(
                    f"this call continues a cache that already holds {past} "
                    "tokens (a cached prefix or an earlier turn), so its video is not pruned; to prune it, pass "
                    "the whole prompt without a cache (or with a new DynamicCache)",
                    HieravidWarning, stacklevel=2,
                )
            output = original(text_model, **call)
            stats = self._passthrough_stats(inputs_embeds, attention_mask, layouts, past)
            self._describe(stats, layouts, cache_of(output))
            return output
        converted = use_cache and type(past_key_values) is DynamicCache  # the caller's, made a PrunedCache in place
        cache = PrunedCache.for_prefill(past_key_values, text_model.config) if use_cache else None
        try:
            return self._prefill(text_model, inputs_embeds, attention_mask, position_ids, cache, layouts, kwargs)
        except BaseException:
            if converted:
                cache.release()  # the caller's empty cache is theirs again
            raise

    def _describe(self, stats: PruneStats, layouts: list[VideoLayout | None], cache: Any) -> None:
        """Report an unpruned call: ``stats``, its videos' ``layouts`` (traced with no decision, as vanilla's),
        and the cache it filled (its later steps keep the report)."""
        trace = (
            _build_trace(self.method.name, self.adapter.num_layers, layouts, [[] for _ in layouts],
                         stats.per_sample_tokens_per_layer)
            if self.trace
            else None
        )
        self._last = (stats, trace)
        self._described = None if cache is None else weakref.ref(cache)

    def remember_encoding(self, output: Any, arguments: dict[str, Any]) -> None:
        """Keep ``arguments`` (small tensors: a video grid) of the video encoding that returned ``output``,
        for a later call given that output instead of the pixels. The last few are kept, as long as their
        outputs live."""
        try:
            ref = weakref.ref(output)
        except TypeError:  # a plain tuple (return_dict=False): no call can be given it as mm_encoder_outputs
            return
        alive = [(r, a) for r, a in self._encodings if r() is not None and r() is not output]
        self._encodings = [*alive[-(_ENCODINGS_KEPT - 1) :], (ref, arguments)]

    def _layouts(self, batch: int, length: int) -> list[VideoLayout | None]:
        """Where each sample's video sits in this ``(batch, length)`` call of the language model."""
        if self.context is None or not self.context.describes(batch, length):
            # The language model called by itself (no multimodal call placed a video; or one was stopped
            # before reaching it, by Ctrl-C in its vision tower, which its hooks do not see).
            return [None] * batch
        kwargs = dict(self.context.kwargs)
        video = self.context.encoded_video()
        if video is not None:  # features encoded before this call: their grid is where they were encoded
            for ref, arguments in self._encodings:
                if _same_encoding(video, ref()):
                    kwargs.update({k: v for k, v in arguments.items() if kwargs.get(k) is None})
        try:
            layouts = self.adapter.video_layouts(CallContext(kwargs), batch)
        except ValueError:
            if self.method.decision_layers(self.adapter.num_layers):
                raise
            # Nothing is pruned (vanilla, budget 1): any input the model takes runs as the model runs it
            # (several videos in a sample, embeddings instead of ids), its visual tokens not counted.
            return [None] * batch
        if video is not None and all(layout is None for layout in layouts):
            if self.method.decision_layers(self.adapter.num_layers):
                raise ValueError(
                    "this call is given video features encoded elsewhere (mm_encoder_outputs) without what says "
                    "how they split into frames: pass the pixels (pixel_values_videos with video_grid_thw), or "
                    "encode the features with the model's get_video_features while hieravid is applied, in the "
                    "thread that asks (a direct model call, not generate, may also pass video_grid_thw beside them)"
                )
        return layouts

    # ------------------------------------------------------------------------------------- prefill
    def _prefill(
        self,
        text_model: torch.nn.Module,
        embeds: torch.Tensor,
        mask_2d: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: PrunedCache | None,
        layouts: list[VideoLayout | None],
        kwargs: dict[str, Any],
    ) -> BaseModelOutputWithPast:
        batch, length, _ = embeds.shape
        device = embeds.device
        adapter, layers = self.adapter, self.adapter.layers
        num_layers = len(layers)
        valid = torch.ones(batch, length, dtype=torch.bool, device=device) if mask_2d is None else mask_2d.bool()
        rope_pos, text_pos = _per_row(*adapter.split_positions(position_ids, batch, length, 0, device), batch)
        side = adapter.side_inputs(kwargs, batch, length)
        kwargs = adapter.strip_side_inputs(kwargs)
        cos, sin = text_model.rotary_emb(embeds, rope_pos)  # (B or 1, N, d_h) each
        cos, sin = cos.expand(batch, -1, -1), sin.expand(batch, -1, -1)

        # Frame and slot of every video token; -1 elsewhere.
        frame_of = torch.full((batch, length), -1, dtype=torch.long, device=device)
        slot_of = torch.full_like(frame_of, -1)
        for b, layout in enumerate(layouts):
            if layout is not None:
                ids = torch.arange(layout.positions.numel(), device=device)
                frame_of[b, layout.positions] = ids // layout.num_slots
                slot_of[b, layout.positions] = ids % layout.num_slots
        visual = frame_of >= 0

        seq = _Sequence(
            index=torch.arange(length, device=device).expand(batch, -1),
            valid=valid, hidden=embeds, cos=cos, sin=sin, text_pos=text_pos, side=side,
        )
        # On the host, in one read: the valid columns, and per sample its video's first and last position,
        # the tokens after the video, and the instruction: the text after the prompt's last image or video
        # (an image may follow the video; LLaVA's newline is the video's). No method removes text and
        # every row ends with its last token, so both are always the row's last columns, and a video with
        # no text between its tokens always sits right before the tokens after it.
        with_video = [b for b, layout in enumerate(layouts) if layout is not None]
        span = torch.full((batch, 2), length, dtype=torch.long, device=device)  # no video: nothing follows
        span[with_video] = torch.stack([torch.stack(torch.aminmax(layouts[b].positions)) for b in with_video])
        columns = torch.arange(length, device=device)
        after_video = valid & (columns > span[:, 1:])  # (B, L)
        instruction = after_video
        if with_video:  # then the call has input ids: the video was located in them
            media = adapter.media_mask(self.context.input_ids().to(device))  # (B, L)
            instruction = after_video & (columns > torch.where(media, columns, -1).amax(dim=1, keepdim=True))
        from_first_valid = length - valid.to(torch.int8).argmax(dim=1)  # (B,) columns from the first valid one on
        host = torch.cat(
            [span.view(-1), after_video.sum(dim=1), valid.sum(dim=1), from_first_valid, instruction.sum(dim=1)]
        ).tolist()
        after_video_length, row_valid = host[2 * batch : 3 * batch], host[3 * batch : 4 * batch]
        instruction_length = host[5 * batch :]
        # Each row's valid columns are its last ones (left padding, or none): as many as from its first on.
        valid_last = row_valid == host[4 * batch : 5 * batch]
        num_valid = sum(row_valid)
        counts = [0 if layout is None else layout.positions.numel() for layout in layouts]  # (B,) visual tokens
        original_visual = list(counts)
        text_tokens = [row_valid[b] - original_visual[b] for b in range(batch)]
        # Per sample: its video tokens are one run of positions (no text between them).
        video_is_a_run = [
            layout is not None and host[2 * b + 1] - host[2 * b] + 1 == counts[b]
            for b, layout in enumerate(layouts)
        ]
        decision_layers = set(self.method.decision_layers(num_layers))
        if decision_layers and torch.is_tensor(self.logits_to_keep):
            raise ValueError(
                "logits_to_keep names positions of the whole prompt, but a pruned prefill returns the positions "
                "it kept: pass an int (the last tokens, always kept text up to the instruction's length), or "
                "call handle.remove() to score given positions"
            )
        if decision_layers and any(after_video_length[b] == 0 for b in with_video):
            raise ValueError(
                "a prompt ends with a video token: the last prompt token is never pruned, so it must be text; "
                "end the prompt with text after the video (as the model's chat template does)"
            )
        # Decision points ranked by the previous layer's attention: that layer's input is kept for them.
        ranked_before = {k for k in decision_layers if k > 0 and self.method.attention_layer(k) != k}
        if any(self.method.attention_layer(point) != point - 1 for point in ranked_before):
            raise ValueError(f"method {self.method.name}: attention_layer(k) must be k or k - 1")
        # Unless each row's valid columns are its last ones, the rows are re-packed so when something is
        # decided (right padding, gaps), and left as they are otherwise (vanilla, budget 1), so the output
        # keeps the caller's layout, as the model without hieravid gives it.
        if not valid_last and decision_layers:
            seq = seq.gather(*_right_align(valid))
            valid_last = True
        states: list[dict] = [{"num_layers": num_layers} for _ in range(batch)]
        # Per sample, the decisions recorded for the trace (None: tracing is off).
        traced: list[list[tuple[StageTrace, torch.Tensor | None]]] | None = (
            [[] for _ in range(batch)] if self.trace else None
        )
        implementation = adapter.attn_implementation
        per_sample: list[list[int]] = [[] for _ in range(batch)]
        kept_positions: list[list[torch.Tensor]] = []
        decide_by_layer: dict[int, float] = {}  # decision layer -> seconds
        attended: tuple[torch.nn.Module, torch.Tensor] | None = None  # (layer, its input) for ranked_before
        for layer_idx, layer in enumerate(layers):
            deciding = layer_idx in decision_layers and any(
                layout is not None and self.method.active(layer_idx, states[b]) for b, layout in enumerate(layouts)
            )
            if deciding:
                # Layers dispatched over several devices (device_map) leave the sequence on the last one's:
                # the decision's indices live here.
                seq.hidden = seq.hidden.to(device)
                start = device_clock(device)
                seq, counts, num_valid = self._decide(
                    layer_idx, attended or (layer, seq.hidden), seq, num_valid, counts, layouts, text_tokens,
                    after_video_length, instruction_length, video_is_a_run, frame_of, slot_of, visual, states,
                    traced,
                )
                decide_by_layer[layer_idx] = device_clock(device) - start
            if layer_idx == 0 or deciding:
                # The sequence changes only here (its counts were read back by the decision, once: each read
                # waits for the GPU to finish all the layers queued so far).
                all_valid = num_valid == seq.valid.numel()  # no column is padding
                # The valid columns: each row's text (never removed) and its visual tokens.
                width = seq.index.shape[1]
                kept_positions.append(
                    [seq.index[b, width - text_tokens[b] - counts[b] :] for b in range(batch)]
                    if valid_last
                    else [seq.index[b][seq.valid[b]] for b in range(batch)]
                )
                mask = attention_mask(seq.valid, seq.hidden.shape[1], implementation, seq.hidden.dtype, all_valid)
            else:
                kept_positions.append(kept_positions[-1])
            for b, count in enumerate(counts):
                per_sample[b].append(count)
            # Nothing is decided between this layer's input and the next's: the same columns.
            attended = (layer, seq.hidden) if layer_idx + 1 in ranked_before else None
            hidden = layer(
                seq.hidden,
                attention_mask=mask,
                position_embeddings=(seq.cos, seq.sin),
                position_ids=seq.text_pos,
                **{CACHE_ARG: cache},
                use_cache=cache is not None,
                **kwargs,
            )
            if layer_idx < len(seq.side):  # deepstack: per-token features added after the first layers
                hidden = hidden + seq.side[layer_idx].to(hidden.device, hidden.dtype)
            seq.hidden = hidden
            if cache is not None:
                cache.key_valid.append(seq.valid)
                cache.all_valid.append(all_valid)
                cache.prefill_positions.append(seq.index)
        if cache is not None:
            cache.virtual_length = cache.prefill_length = length
            cache.past_valid = valid
            cache.fixed_length = length - min(after_video_length[b] for b in with_video)
        hidden = text_model.norm(seq.hidden)

        self._described = None if cache is None else weakref.ref(cache)
        stats = PruneStats(
            method=self.method.name,
            per_sample_tokens_per_layer=per_sample,
            visual_tokens=original_visual,
            text_tokens=text_tokens,
            per_sample_segments=[state.get("num_segments") for state in states],
            flops=self._count_flops(per_sample, text_tokens, original_visual),
            decide_seconds_by_layer=decide_by_layer,
            kept_positions=kept_positions,
        )
        trace = None if traced is None else _build_trace(self.method.name, num_layers, layouts, traced, per_sample)
        self._last = (stats, trace)
        return text_model_output(hidden, cache)

    def _decide(
        self,
        layer_idx: int,
        attended: tuple[torch.nn.Module, torch.Tensor],
        seq: _Sequence,
        num_valid: int,
        counts: list[int],
        layouts: list[VideoLayout | None],
        text_tokens: list[int],
        after_video_length: list[int],
        instruction_length: list[int],
        video_is_a_run: list[bool],
        frame_of: torch.Tensor,
        slot_of: torch.Tensor,
        visual: torch.Tensor,
        states: list[dict],
        traced: list[list[tuple[StageTrace, torch.Tensor | None]]] | None = None,
    ) -> tuple[_Sequence, list[int], int]:
        """Ask the method about every sample at one decision point and apply the answers (and record
        them in ``traced`` when tracing). ``attended``: the layer whose attention ranks
        (:meth:`PruningMethod.attention_layer`) and its input, with the columns of ``seq``. Host ints
        in: ``num_valid``, the valid columns of ``seq`` (each row's last ones); ``counts``, the visual tokens
        of each row; per sample, ``text_tokens``, its text tokens, ``after_video_length``, the tokens after its
        video, ``instruction_length``, the text after its last image or video (both the row's last columns),
        and ``video_is_a_run``, no text between its video tokens.
        Returns the new sequence with its ``counts`` and ``num_valid``, read back together."""
        length = seq.valid.shape[1]
        keep = seq.valid.clone()  # (B, L)
        # Per sample that merged: (its kept columns, their new hidden states, their new side inputs).
        replaced: list[tuple[int, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
        keys_cache: dict[str, torch.Tensor] = {}
        # Under torch.autocast the relevance row's projections run as the layer's own do; the method's
        # math runs with autocast off, in the float32 its ops promise (bfloat16 round-off would outweigh
        # the DPP's rank floor and the min-max normalisation's guard).
        device_type = seq.hidden.device.type
        autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None

        def projections(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
            if f"q{rows}" not in keys_cache:
                with torch.autocast(device_type, dtype=autocast) if autocast else contextlib.nullcontext():
                    q, k = self.adapter.query_key(*attended, seq.cos, seq.sin, query_rows=rows)
                q, k = q.to(seq.valid.device), k.to(seq.valid.device)  # a layer on another device: back here
                keys_cache[f"q{rows}"], keys_cache["k"] = q, k
            return keys_cache[f"q{rows}"], keys_cache["k"]

        is_visual = visual.gather(1, seq.index)  # (B, L) column holds a video token
        for b, layout in enumerate(layouts):
            if layout is None:
                continue
            count = counts[b]
            if count == 0:
                continue
            if video_is_a_run[b]:  # the row's columns right before the tokens after it: a slice, no read
                end = length - after_video_length[b]
                cols: slice | torch.Tensor = slice(end - count, end)
            else:
                cols = torch.nonzero(seq.valid[b] & is_visual[b]).squeeze(1)  # (N,)
            original = seq.index[b, cols]

            # The row's valid columns are its last ones, its text and visual tokens: no read to find them.
            first = length - text_tokens[b] - count

            def relevance(
                query_rows: int = 1, b: int = b, cols: slice | torch.Tensor = cols, first: int = first
            ) -> torch.Tensor:
                q, k = projections(query_rows)  # (B, H, Q, d_h), (B, H_kv, L, d_h)
                a = attention_from_queries(q[b].transpose(0, 1), k[b][:, first:].transpose(0, 1))  # (valid,)
                if isinstance(cols, slice):
                    return a[cols.start - first : cols.stop - first]
                return a[cols - first]

            tokens = VideoTokens(
                features=seq.hidden[b, cols],  # a view when cols is a slice
                frame=frame_of[b, original],
                slot=slot_of[b, original],
                num_frames=layout.num_frames,
                num_slots=layout.num_slots,
                relevance_from_attention=relevance if layer_idx > 0 else None,
                instruction=seq.hidden[b, seq.hidden.shape[1] - instruction_length[b] :],
            )
            with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
                decision: Decision = self.method.decide(layer_idx, tokens, states[b])
            if decision.keep.shape != (count,):
                raise RuntimeError(f"method {self.method.name} returned a keep mask of the wrong shape")
            keep[b, cols] = decision.keep  # every column in cols is valid: True before
            if traced is not None:
                token = frame_of[b, original] * layout.num_slots + slot_of[b, original]  # (N,) token index
                traced[b].append((_stage_trace(layer_idx, token, decision), decision.frame_segment))
            if decision.merge_into is None and decision.features is None:
                continue
            if decision.features is not None:
                features = decision.features.to(seq.hidden.dtype)
            else:
                features = _group_mean(seq.hidden[b, cols], decision.keep, decision.merge_into)
            side = (  # per-token side inputs follow the merge; with new features alone they stay
                [_group_mean(s[b, cols], decision.keep, decision.merge_into) for s in seq.side]
                if decision.merge_into is not None
                else []
            )
            replaced.append((b, torch.arange(length, device=keep.device)[cols][decision.keep], features, side))
        # One read: the new width, the kept columns (keep only clears valid ones, so it removed nothing if
        # they are all still there) and each row's visual tokens.
        kept_per_row = keep.sum(dim=1)  # (B,)
        visual_per_row = (keep & is_visual).sum(dim=1)  # (B,)
        width, kept, *counts = torch.cat(
            [kept_per_row.max().view(1), kept_per_row.sum().view(1), visual_per_row]
        ).tolist()
        if not replaced and kept == num_valid:
            return seq, counts, num_valid  # nothing removed or merged: no copy
        cols, valid = _right_align(keep, width)
        out = seq.gather(cols, valid)  # new tensors: the merged tokens are written into them in place
        if replaced:
            new_col = torch.full_like(keep, -1, dtype=torch.long)  # (B, L) column of each kept one in out
            new_col.scatter_(1, cols, torch.arange(cols.shape[1], device=cols.device).expand_as(cols))
            for b, kept_cols, features, side in replaced:
                at = new_col[b, kept_cols]
                out.hidden[b, at] = features
                for new, value in zip(out.side, side):
                    new[b, at] = value.to(new.dtype)
        return out, counts, kept

    # -------------------------------------------------------------------------------------- decode
    def _decode(
        self,
        text_model: torch.nn.Module,
        embeds: torch.Tensor,
        mask_2d: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: PrunedCache,
        kwargs: dict[str, Any],
    ) -> BaseModelOutputWithPast:
        batch, query_len, _ = embeds.shape
        device = embeds.device
        rope_pos, text_pos = _per_row(
            *self.adapter.split_positions(position_ids, batch, query_len, cache.virtual_length, device), batch
        )
        kwargs = self.adapter.strip_side_inputs(kwargs)
        cos, sin = text_model.rotary_emb(embeds, rope_pos)
        new_valid = (
            torch.ones(batch, query_len, dtype=torch.bool, device=device)
            if mask_2d is None
            else mask_2d[:, -query_len:].bool()
        )
        past = cache.virtual_length
        if mask_2d is not None and mask_2d.shape[1] == past + query_len:
            # The caller's mask over the past may hide keys the cache still attends to (a batched chat turn
            # masks the padding a finished row was fed): read that with the new columns' flag, one read.
            hidden_now = cache.past_valid & ~mask_2d[:, :past].bool()  # (B, past)
            new_all, hides = torch.stack([new_valid.all(), hidden_now.any()]).tolist()
            if hides:
                cache.hide(hidden_now)
        else:
            new_all = mask_2d is None or bool(new_valid.all())  # one device read per step, not one per layer
        cache.past_valid = torch.cat([cache.past_valid, new_valid], dim=1)
        hidden = embeds
        implementation = self.adapter.attn_implementation
        for layer_idx, layer in enumerate(self.adapter.layers):
            key_valid = torch.cat([cache.key_valid[layer_idx], new_valid], dim=1)  # (B, stored + q)
            all_valid = cache.all_valid[layer_idx] and new_all
            hidden = layer(
                hidden,
                attention_mask=attention_mask(key_valid, query_len, implementation, hidden.dtype, all_valid),
                position_embeddings=(cos, sin),
                position_ids=text_pos,
                **{CACHE_ARG: cache},
                use_cache=True,
                **kwargs,
            )
            cache.key_valid[layer_idx] = key_valid
            cache.all_valid[layer_idx] = all_valid
        cache.virtual_length += query_len
        return text_model_output(text_model.norm(hidden), cache)

    def _count_flops(
        self, per_sample: list[list[int]], text: list[int], visual: list[int], past_tokens: int = 0
    ) -> FlopsCount:
        """This call's FLOPs: its LM head's positions, and the dense products of eager attention and of SDPA
        continuing a cache (several queries after cached keys get an explicit mask)."""
        causal = self.adapter.attn_implementation != "eager" and past_tokens == 0
        return count_flops(self._shape, per_sample, text, visual, logits_to_keep=self.logits_to_keep, causal=causal,
                           past_tokens=past_tokens)

    # ------------------------------------------------------------------------------------- no video
    def _passthrough_stats(
        self, embeds: torch.Tensor, mask_2d: torch.Tensor | None, layouts: list[VideoLayout | None],
        past_tokens: int = 0,
    ) -> PruneStats:
        """A call nothing is pruned in: every layer sees every token (its video's, if any), and the
        ``past_tokens`` keys of the cache it continues."""
        batch, length, _ = embeds.shape
        # This call's tokens (a continued cache's prefix is in the 2-D mask too).
        valid = [length] * batch if mask_2d is None else [int(v) for v in mask_2d[:, -length:].sum(dim=1).tolist()]
        visual = [0 if layout is None else layout.positions.numel() for layout in layouts]
        text = [v - n for v, n in zip(valid, visual)]
        per_sample = [[n] * self.adapter.num_layers for n in visual]
        return PruneStats(
            method=self.method.name,
            per_sample_tokens_per_layer=per_sample,
            visual_tokens=visual,
            text_tokens=text,
            per_sample_segments=[None] * batch,
            flops=self._count_flops(per_sample, text, visual, past_tokens),
            decide_seconds_by_layer={},
            kept_positions=[],
            pruned=False,
        )


# ------------------------------------------------------------------------------------------- trace
def _stage_trace(layer: int, token: torch.Tensor, decision: Decision) -> StageTrace:
    """One sample's decision at ``layer`` in token indices (``token`` (N,) of the tokens present), on CPU."""
    keep = decision.keep.detach().cpu()
    token = token.cpu()
    merged_into = torch.full_like(token, -1)
    if decision.merge_into is not None:
        target = decision.merge_into.detach().cpu()
        merged = ~keep & (target >= 0)
        merged_into[merged] = token[target[merged]]

    def cpu(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().float().cpu() if t.is_floating_point() else t.detach().cpu()

    return StageTrace(
        layer=layer, tokens=token, keep=keep, merged_into=merged_into,
        scores=cpu(decision.scores), segment=cpu(decision.segment), stage=decision.stage,
    )


def _build_trace(
    method: str,
    num_layers: int,
    layouts: list[VideoLayout | None],
    traced: list[list[tuple[StageTrace, torch.Tensor | None]]],
    per_sample: list[list[int]],
) -> PruneTrace:
    samples: list[SampleTrace | None] = []
    for layout, records, rows in zip(layouts, traced, per_sample):
        if layout is None:
            samples.append(None)
            continue
        frame_segment = next((fs for _, fs in records if fs is not None), None)
        samples.append(SampleTrace(
            num_frames=layout.num_frames,
            num_slots=layout.num_slots,
            positions=layout.positions.detach().cpu(),
            stages=[stage for stage, _ in records],
            frame_segment=None if frame_segment is None else frame_segment.detach().cpu(),
            tokens_per_layer=list(rows),
            grid_hw=layout.grid_hw,
            temporal_patch=layout.temporal_patch,
        ))
    return PruneTrace(method=method, num_layers=num_layers, samples=samples)
