"""Model-level speed benchmark: prefill latency, time to first token, decoding, memory and KV cache of
every pruning method on the same model, measured in one process, interleaved.

Models are the real transformers architectures built from configs with random weights (nothing is
downloaded; latency does not depend on weight values). Inputs are built directly (token ids and random
pixel values laid out as the family's processor lays them out), so no processor is needed.

How one measurement is taken (one ``model.generate`` call with ``new_tokens`` greedy tokens):

- The vision tower runs once per round, timed on its own (``vision_ms``); its output is cached and the
  model's ``get_video_features`` returns that cache inside the timed ``generate`` (the pruning runtime
  still sees the call and its arguments). So the language-model numbers exclude the vision tower and the
  vision tower is the same for every method.
- ``prefill_ms``: the decoder prefill, i.e. the language model's ``forward`` on the prompt (the decoder
  layers, the method's decisions, the final norm), timed by forward hooks on the language model around
  its first call (the device is synchronised in the hooks).
- ``ttft_ms``: ``vision_ms`` of the round + the time from entering ``generate`` to the end of its first
  model forward (input preparation, rotary positions, embedding, prefill, LM head of the last token).
- ``decode_ms_per_token``: (``generate`` total - time to the end of the first forward) / (new_tokens - 1).
- ``decide_ms``: ``handle.last_stats.decide_seconds`` (the runtime's own timer around the method's
  decisions; part of ``prefill_ms``).
- ``peak_memory``: on CUDA, ``torch.cuda.max_memory_allocated`` during the prefill minus what was
  allocated before the call (``peak_memory_total_bytes``: the absolute peak, weights included); on CPU,
  the growth of the process's peak resident set size during the prefill (Linux ``VmHWM`` after
  ``malloc_trim`` and a reset through ``/proc/self/clear_refs``, minus ``VmRSS`` before): memory the
  allocator still holds from earlier calls is reused without showing up, so it can under-count; None
  where the kernel does not allow the reset. The CPU reset hands freed memory back to the system, so
  the next call page-faults on every new allocation; on CPU memory is therefore measured in the warm-up
  rounds and the timed rounds run without the reset (with no warm-up, in the timed rounds). A method's
  first call also allocates what it then keeps (a few MB at the ``tiny`` shape), so with two or more
  warm-up rounds the first is left out. After the last warm-up round one unmeasured vanilla call grows
  the heap back to the largest activations, so the first timed call does not fault for them either.
- ``kv_bytes``: keys + values over every layer of the cache returned by the prefill (read in the hook,
  before decoding appends); ``kv_text_bytes`` = text tokens x bytes per token per layer x layers;
  ``kv_visual_bytes`` = the rest.
- ``prefill_page_faults``: minor page faults of the process during the prefill (Linux, ``getrusage``).
- The CPU allocator: glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most)
  with fresh pages from the system and hands them back on ``free``, so the next call faults on (and
  the kernel zeroes) every page again. That cost grows with the size of the activations, not with the
  FLOPs: at the ``mini`` shape a vanilla prefill faulted on about 1.0-1.4 M pages where a pruned one
  faulted on at most about 93 k, usually almost none. By default (``cpu_malloc="keep"``) the benchmark
  therefore has glibc keep freed memory for reuse, as torch's CUDA caching allocator does on a GPU;
  ``cpu_malloc="default"`` measures the C library's default behaviour.

- ``others_cpu``: the share of all CPUs' time that other processes (and, on a VM, the hypervisor's
  steal) took during the whole run (Linux ``/proc/stat`` less this process's own time). Above 0.1 the
  report calls the timings unreliable; the 1-minute load average is printed too, but it still holds a
  run that ended a minute before this one started.

Speed-up = vanilla's median ``prefill_ms`` / the method's; theoretical speed-up = exact FLOPs of the
unpruned prefill / the method's (``last_stats.flops``: every matmul, text tokens and the last token's LM
head included); efficiency = speed-up / theoretical speed-up.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import math
import os
import platform
import statistics
import time
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

import hieravid
from hieravid.bench.shapes import SHAPES, TOKEN_IDS, BenchShape
from hieravid.config import check_budget, check_choice, is_integer, is_number
from hieravid.files import save_figure
from hieravid.methods import available, build, parse_method, warn_if_budget_is_ignored
from hieravid.models import CallContext, find_adapter
from hieravid.runtime import device_clock
from hieravid.runtime.compat import cache_of
from hieravid.warning import HieravidWarning

__all__ = [
    "SHAPES",
    "BenchShape",
    "MethodResult",
    "ModelBenchResult",
    "bench_device",
    "busy_elsewhere",
    "build_bench_inputs",
    "build_bench_model",
    "check_goals",
    "check_weights_fit",
    "default_dtype",
    "format_report",
    "keep_freed_memory",
    "machine_description",
    "plant_scenes",
    "plot_report",
    "run_model_bench",
    "weight_bytes",
]

UNPATCHED = "unpatched"  # pseudo-method: the model without hieravid.apply (the runtime's own overhead)
_PAD, _EOS, _IM_START = TOKEN_IDS["pad"], TOKEN_IDS["eos"], TOKEN_IDS["im_start"]
_VIDEO, _VISION_START, _VISION_END = TOKEN_IDS["video"], TOKEN_IDS["vision_start"], TOKEN_IDS["vision_end"]
_LLAVA_VIDEO, _FIRST_WORD = TOKEN_IDS["llava_video"], TOKEN_IDS["first_word"]


def _shape(name: str) -> BenchShape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    return SHAPES[name]


def build_bench_model(
    shape: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.nn.Module:
    """The random-weight model of ``shape``, built directly on ``device`` in ``dtype`` (sdpa, eval mode)."""
    spec = _shape(shape)
    config = spec.config()
    import transformers

    cls = {
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "llava_onevision": transformers.LlavaOnevisionForConditionalGeneration,
    }[spec.family]
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = cls._from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.eval()
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id, generation.bos_token_id = _PAD, _EOS, None
    generation.do_sample = False
    return model


def default_dtype(shape: str, device: torch.device) -> torch.dtype:
    """The dtype ``hieravid bench`` uses when none is asked for: bfloat16 on CUDA and for the 7B shapes
    everywhere (the released models' dtype; float32 would double their weights), float32 for the small
    shapes on a CPU."""
    return torch.bfloat16 if device.type == "cuda" or _shape(shape).needs_gpu else torch.float32


def weight_bytes(shape: str, dtype: torch.dtype) -> int:
    """Bytes of the weights of ``shape`` in ``dtype``, counted on the meta device (nothing allocated)."""
    model = build_bench_model(shape, device="meta", dtype=dtype)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _free_bytes(device: torch.device) -> int | None:
    """Memory ``device`` can still give, in bytes: free CUDA memory, or Linux's ``MemAvailable``; None
    where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    return None if available is None else 1024 * available


def check_weights_fit(shape: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before building anything, a shape whose weights alone exceed the memory ``device`` has
    free (a CPU would otherwise be killed by the kernel partway through the build), naming the fix."""
    free = _free_bytes(device)
    if free is None:
        return
    need = weight_bytes(shape, dtype)
    if need <= free:
        return

    def size(n: int) -> str:
        return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"

    fix = "a device with more free memory or a smaller shape (tiny, mini)"
    if dtype.itemsize > 2:
        fix = f"--dtype bfloat16 ({size(need * 2 // dtype.itemsize)}), or " + fix  # every weight in dtype
    name = str(dtype).replace("torch.", "")
    raise ValueError(
        f"shape {shape} in {name} needs {size(need)} for its weights alone, but {device} has "
        f"{size(free)} free: use {fix}"
    )


def build_bench_inputs(
    shape: str,
    model: torch.nn.Module,
    frames: int | None = None,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """One prompt with one video, laid out as the family's processor lays it out, on ``device`` (default:
    the model's).

    ``[<|im_start|>] prefix VIDEO question``; Qwen2-VL: ``<|vision_start|> T*h*w/4 video tokens
    <|vision_end|>`` with ``pixel_values_videos (T h w, 3 * 2 * 14^2)``, ``video_grid_thw`` and
    ``mm_token_type_ids``; LLaVA-OneVision: ``F * 196 + 1`` video tokens with ``pixel_values_videos
    (1, F, 3, 384, 384)``. Pixels are random normal (already "normalized").
    """
    spec = _shape(shape)
    frames = spec.frames if frames is None else frames
    _check_frames(shape, spec, frames)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size

    def words(n: int) -> list[int]:
        return torch.randint(_FIRST_WORD, vocab, (n,), generator=gen).tolist()

    height, width = spec.frame_size
    vc = model.config.vision_config
    dtype = model.dtype
    if spec.family == "qwen2_vl":
        tps, patch, merge = vc.temporal_patch_size, vc.patch_size, vc.spatial_merge_size
        t, h, w = frames // tps, height // patch, width // patch
        video = [_VISION_START] + [_VIDEO] * (t * h * w // merge**2) + [_VISION_END]
        pixels = torch.randn(t * h * w, vc.in_channels * tps * patch**2, generator=gen)  # (T h w, C tps p^2)
        extra = {"pixel_values_videos": pixels.to(dtype), "video_grid_thw": torch.tensor([[t, h, w]])}
    else:
        side = vc.image_size
        per_frame = math.ceil(side // vc.patch_size / 2) ** 2
        video = [_LLAVA_VIDEO] * (frames * per_frame + 1)
        pixels = torch.randn(1, frames, 3, side, side, generator=gen)  # (B, F, 3, S, S)
        extra = {"pixel_values_videos": pixels.to(dtype)}
    ids = torch.tensor([[_IM_START] + words(spec.prefix_tokens) + video + words(spec.question_tokens)])  # (1, N)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
    if spec.family == "qwen2_vl":
        inputs["mm_token_type_ids"] = torch.where(ids == _VIDEO, 2, 0)  # (1, N) 0 text, 2 video
    device = model.device if device is None else device
    return {k: v.to(device) for k, v in inputs.items()}


# -------------------------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    """CPU model, cores, torch threads, torch version (and the GPU on CUDA)."""
    cpu = f"{_cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    return f"{gpu}{cpu}, torch {torch.__version__}"


def _proc_kib(path: str, key: str) -> int | None:
    """The ``key:`` line of a Linux ``/proc`` file such as ``/proc/self/status``, in KiB; None where
    unknown."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def bench_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device the benchmarks can time: a CPU, or a CUDA device torch sees (their
    clocks wait for CUDA's queued work; other devices would be timed wrong). See
    :func:`hieravid.infer.check_device`."""
    from hieravid.infer import check_device

    return check_device(device)


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# Above this share of the machine's CPU time taken by others during the run, the report says its
# timings are unreliable (on 2 cores, one busy process elsewhere is 0.5).
_OTHERS_UNRELIABLE = 0.1


class CpuWatch:
    """CPU time the rest of the machine uses while this process runs something (Linux).

    From the start to :meth:`others_share`: (the CPUs' busy time in ``/proc/stat``, steal included, minus
    this process's own user + system time) / (wall time x CPUs). Unlike the load average, which decays
    over minutes, it covers exactly the interval, so a run that ends just before this one starts does
    not count. None where ``/proc/stat`` cannot be read.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu" or len(fields) < 5:
            return None
        # user nice system idle iowait irq softirq steal (guest time is already in user).
        ticks = [int(v) for v in fields[1:9]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        return busy / os.sysconf("SC_CLK_TCK")

    @classmethod
    def _sample(cls) -> tuple[float, float | None, float]:
        own = os.times()
        return time.monotonic(), cls._busy_seconds(), own.user + own.system

    def others_share(self) -> float | None:
        """Share of all CPUs' time since the start that other processes (and a hypervisor) took."""
        (wall0, busy0, own0), (wall1, busy1, own1) = self._start, self._sample()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return None
        others = (busy1 - busy0) - (own1 - own0)
        return round(min(max(others / ((wall1 - wall0) * (os.cpu_count() or 1)), 0.0), 1.0), 3)

    def warn_if_busy(self) -> None:
        """Warn when other processes took enough of the CPUs since the start (:func:`busy_elsewhere`) for
        the times measured on them meanwhile to be unreliable."""
        others = self.others_share()
        if busy_elsewhere(others):
            warnings.warn(f"other processes took {others:.0%} of the CPUs' time while this ran: the times are "
                          "unreliable", HieravidWarning, stacklevel=2)


def busy_elsewhere(others: float | None) -> bool:
    """Whether other processes took enough of the CPUs (``others``, from :meth:`CpuWatch.others_share`) for
    the times measured meanwhile to be unreliable."""
    return others is not None and others > _OTHERS_UNRELIABLE


def _reset_peak_rss() -> bool:
    """Give free heap memory back to the system (glibc ``malloc_trim``), then reset the process's peak
    resident set size (Linux: write 5 to /proc/self/clear_refs). False where the reset is not allowed."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident size may include freed memory
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _page_faults() -> int | None:
    """Minor page faults of this process so far (None where ``getrusage`` is missing)."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, where freed memory is reused
_KEEP_TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt takes: free memory stays in the heap


_kept: str | None = None  # keep_freed_memory's description once it has been applied in this process


def keep_freed_memory() -> str | None:
    """Have glibc's ``malloc`` keep freed memory for reuse in this process (it cannot be undone): blocks
    up to 1 GiB come from the heap instead of fresh pages, and the heap is not shrunk on ``free``
    (``malloc_trim`` still gives memory back). Returns a description, or None where this is not glibc
    or it refused."""
    global _kept
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    if mallopt(_M_MMAP_THRESHOLD, _KEEP_MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD) != 1:
        return None
    _kept = (f"glibc malloc keeps freed memory for reuse (mallopt M_MMAP_THRESHOLD {_KEEP_MMAP_THRESHOLD >> 20} "
             "MiB, M_TRIM_THRESHOLD 2 GiB), as torch's CUDA caching allocator does")
    return _kept


# ----------------------------------------------------------------------------------------- recording


def _cache_bytes(cache: Any) -> tuple[int, int, int] | None:
    """(total bytes of keys + values, bytes per token per layer, layers) of a transformers cache."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    total, per_token = 0, 0
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        total += keys.numel() * keys.element_size() + values.numel() * values.element_size()
        # keys (B, H_kv, L, d_h): one token of one sample
        per_token = keys.shape[1] * keys.shape[3] * keys.element_size() + values.shape[1] * values.shape[3] * values.element_size()
    return total, per_token, len(layers)


class _Recorder:
    """Forward hooks on the whole model and its language model that time one ``generate`` call."""

    def __init__(self, model: torch.nn.Module, text_model: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.hooks = [
            model.register_forward_pre_hook(self._model_start),
            model.register_forward_hook(self._model_end),
            text_model.register_forward_pre_hook(self._text_start),
            text_model.register_forward_hook(self._text_end),
        ]
        self.reset(memory=False)

    def reset(self, memory: bool = True) -> None:
        """Before a call; ``memory=False`` skips the peak-memory measurement (and, on CPU, its reset)."""
        self.model_calls = 0
        self.first_forward_end: float | None = None
        self.text_start: float | None = None
        self.prefill_seconds: float | None = None
        self.faults_start: int | None = None
        self.prefill_faults: int | None = None
        self.cache: tuple[int, int, int] | None = None
        self.peak_bytes: int | None = None
        self.peak_total_bytes: int | None = None
        self.memory_before: int | None = None  # bytes in use before the call; None: not measured
        if memory and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.memory_before = torch.cuda.memory_allocated(self.device)
        elif memory and self.device.type == "cpu" and _reset_peak_rss():
            self.memory_before = (_proc_kib("/proc/self/status", "VmRSS") or 0) * 1024

    def _model_start(self, module: Any, args: Any) -> None:
        self.model_calls += 1

    def _model_end(self, module: Any, args: Any, output: Any) -> None:
        if self.model_calls != 1:
            return
        self.first_forward_end = device_clock(self.device)
        self.cache = _cache_bytes(cache_of(output))
        if self.memory_before is None:
            pass  # not measured in this call
        elif self.device.type == "cuda":
            self.peak_total_bytes = torch.cuda.max_memory_allocated(self.device)
            self.peak_bytes = self.peak_total_bytes - self.memory_before
        else:
            hwm = _proc_kib("/proc/self/status", "VmHWM")
            if hwm is not None:
                self.peak_total_bytes = hwm * 1024
                self.peak_bytes = self.peak_total_bytes - self.memory_before

    def _text_start(self, module: Any, args: Any) -> None:
        if self.prefill_seconds is None and self.text_start is None:
            self.faults_start = _page_faults()
            self.text_start = device_clock(self.device)

    def _text_end(self, module: Any, args: Any, output: Any) -> None:
        if self.prefill_seconds is None and self.text_start is not None:
            self.prefill_seconds = device_clock(self.device) - self.text_start
            faults = _page_faults()
            if faults is not None and self.faults_start is not None:
                self.prefill_faults = faults - self.faults_start

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


# ------------------------------------------------------------------------------------------- results


@dataclass
class MethodResult:
    """One method at one budget: medians over the timed repeats (ms, bytes) and derived ratios.

    ``*_runs_ms`` hold every timed run. Ratios against vanilla are filled by :func:`run_model_bench`.
    """

    method: str
    budget: float
    achieved_budget: float
    tokens_per_layer: list[int]
    flops_exact: float
    flops_vanilla_exact: float
    prefill_ms: float
    ttft_ms: float
    decode_ms_per_token: float
    decide_ms: float
    peak_memory_bytes: int | None
    peak_memory_total_bytes: int | None
    kv_bytes: int
    kv_text_bytes: int
    kv_visual_bytes: int
    prefill_page_faults: int | None = None
    prefill_runs_ms: list[float] = field(default_factory=list)
    ttft_runs_ms: list[float] = field(default_factory=list)
    decode_runs_ms_per_token: list[float] = field(default_factory=list)
    decide_runs_ms: list[float] = field(default_factory=list)
    # decide_ms per decision point: median ms keyed by the index of the decoder layer the point runs before
    # ("0": before the LLM).
    decide_ms_by_layer: dict[str, float] = field(default_factory=dict)
    theoretical_speedup: float = 1.0
    speedup: float = 1.0
    ttft_speedup: float = 1.0
    efficiency: float = 1.0
    decide_pct_of_vanilla_prefill: float = 0.0
    kv_visual_ratio: float = 1.0
    # Segments the method found in the video (HieraVid's Eq. 2); None for methods without segments. The
    # DPP's kernel blocks cost n_i^2 d per segment of n_i tokens, so one segment is its costliest case.
    segments: int | None = None


@dataclass
class ModelBenchResult:
    """Everything one ``hieravid bench`` run measured, with its machine, shape and protocol."""

    machine: str
    device: str
    dtype: str
    torch_version: str
    torch_threads: int
    shape: str
    shape_description: str
    frames: int
    frame_size: list[int]
    visual_tokens: int
    text_tokens: int
    prompt_tokens: int
    num_layers: int
    vision_ms: float
    vision_runs_ms: list[float]
    vision_note: str
    repeats: int
    warmup: int
    new_tokens: int
    memory_note: str
    load_average: list[float | None]
    results: list[MethodResult]
    repeats_asked: int | None = None  # timed rounds asked for; more than ``repeats`` when interrupted
    interrupted: bool = False
    allocator_note: str = "not recorded"  # absent from the JSON of releases before it
    others_cpu: float | None = None  # CpuWatch.others_share over the run; absent before it, None off Linux
    scenes: int | None = None  # planted scenes (plant_scenes); None: the vision tower's own output
    skipped: list[str] = field(default_factory=list)  # "method@budget: why", pairs not measured (skip_unreachable)
    cpu_count: int | None = None  # the measuring machine's logical CPUs; absent from older files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelBenchResult":
        """The inverse of :meth:`to_dict` (e.g. to re-plot a saved ``--json`` file). Keys this release does
        not know (from a later one) are left out; fields added since a file was written take defaults."""

        def known(kind: type, values: Any, where: str) -> dict[str, Any]:
            if not isinstance(values, dict):
                raise ValueError(f"{where.rstrip('.') or 'the file'} is a JSON {type(values).__name__}, not an object")
            hints = typing.get_type_hints(kind)
            for name, value in values.items():
                if name in hints and not _is_a(value, hints[name]):
                    expected = hints[name].__name__ if isinstance(hints[name], type) else str(hints[name])
                    raise ValueError(f"{where}{name} is {value!r}, not {expected}")
            return {k: v for k, v in values.items() if k in hints}

        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ValueError("it holds no 'results' list")
        results = [MethodResult(**known(MethodResult, r, f"results[{i}].")) for i, r in enumerate(data["results"])]
        if results and (results[0].method, results[0].budget) != ("vanilla", 1.0):
            raise ValueError("its first result is not vanilla's, which every other is measured against")
        if results:  # the ratios again, from the medians and FLOPs the file holds
            for r in results:
                r.theoretical_speedup = r.flops_vanilla_exact / r.flops_exact
            _relate(results)
        return cls(**{**known(cls, {k: v for k, v in data.items() if k != "results"}, ""), "results": results})

    def get(self, method: str, budget: float | None = None) -> MethodResult:
        """The result of ``method`` (at ``budget``; vanilla has one, at 1.0)."""
        for r in self.results:
            if r.method == method and (budget is None or math.isclose(r.budget, budget)):
                return r
        raise KeyError(f"no result for {method} at budget {budget}")


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON has the type ``hint`` names (float, int, str, bool, None, their unions,
    lists and string-keyed dicts of them); a bool is no number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is_a(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is_a(v, args[1]) for v in value.values())
    if hint is float:
        return is_number(value)
    if hint is int:
        return is_integer(value)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


# ---------------------------------------------------------------------------------------------- run


def _cached_encoder(encode: Callable, output: Any) -> Callable:
    """A stand-in for ``get_video_features`` that returns ``output`` (same signature, for ``generate``)."""

    @functools.wraps(encode)
    def cached(*args: Any, **kwargs: Any) -> Any:
        return output

    return cached


def _encoder_kwargs(encode: Callable, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    names = inspect.signature(encode).parameters
    kwargs: dict[str, Any] = {k: v for k, v in inputs.items() if k in names}
    kwargs["return_dict"] = True
    return kwargs


# Within a planted scene each frame is the scene's frame plus this much independent noise (relative to
# the features' RMS): same-slot cosines of about 1 / (1 + 2 * 0.3^2) = 0.85 inside a scene, about 0
# across a cut, against the segmentation's tau = 0.6.
_SCENE_NOISE = 0.3


def plant_scenes(output: Any, num_frames: int, num_slots: int, scenes: int, seed: int = 0) -> Any:
    """The vision tower's ``output`` with its video features replaced by ``scenes`` planted scenes.

    A random-weight tower maps every frame to much the same features (the 7B towers give one segment
    whatever the pixels), while the DPP's cost depends on the segments (``n_i^2 d`` per segment of
    ``n_i`` tokens). Planted, the frames split into ``scenes`` equal runs; each run has one random
    ``(P, D)`` frame at the RMS of the tower's output, and each of its frames is that frame plus 30%
    independent noise, so HieraVid's segmentation (Eq. 1-2) finds exactly ``scenes`` segments.

    Args:
        output: what ``get_video_features`` returned for one video (``pooler_output``: Qwen2-VL a tuple
            holding ``(T * P, D)``, LLaVA-OneVision ``(1, T * P + 1, D)`` with its trailing newline, kept).
        num_frames: T, frames as the model sees them (Qwen2-VL: temporal groups).
        num_slots: P, tokens per frame.
        scenes: scenes to plant, 1..T.
        seed: the random frames and noise.

    Returns:
        ``output`` with a new ``pooler_output`` (same structure, shape, dtype and device).
    """
    _check_scenes(scenes, num_frames)
    pooled = output.pooler_output
    is_tuple = isinstance(pooled, (tuple, list))
    video = pooled[0] if is_tuple else pooled
    flat = video.reshape(-1, video.shape[-1])  # (T * P [+ 1], D)
    count, dim = num_frames * num_slots, flat.shape[1]
    rms = flat[:count].float().pow(2).mean().sqrt().item()
    gen = torch.Generator().manual_seed(seed)
    scene_of = torch.arange(num_frames) * scenes // num_frames  # (T,) equal runs, in order
    frame = torch.randn(scenes, num_slots, dim, generator=gen)  # (K, P, D)
    noise = torch.randn(num_frames, num_slots, dim, generator=gen)  # (T, P, D)
    planted = (rms * (frame[scene_of] + _SCENE_NOISE * noise)).reshape(count, dim)
    new = flat.clone()
    new[:count] = planted.to(device=flat.device, dtype=flat.dtype)
    new = new.reshape(video.shape)
    output.pooler_output = (new, *pooled[1:]) if is_tuple else new
    return output


def _check_scenes(scenes: int, num_frames: int) -> None:
    """Refuse a scene count outside 1..T (T frames as the model sees them)."""
    if not 1 <= scenes <= num_frames:
        raise ValueError(f"scenes must be between 1 and the video's {num_frames} frames as the model sees them "
                         f"(Qwen2-VL: temporal groups), got {scenes}")


def _check_frames(shape: str, spec: BenchShape, frames: int) -> None:
    """Refuse a frame count the shape's model cannot take: below 1, or (Qwen2-VL) not whole temporal groups."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if spec.family == "qwen2_vl":
        tps = spec.config().vision_config.temporal_patch_size
        if frames % tps:
            raise ValueError(f"{shape}: frames must be a multiple of {tps} (frames per temporal group), got {frames}")


def _model_frames(spec: BenchShape, frames: int) -> int:
    """Frames as the model sees them: Qwen2-VL groups ``temporal_patch_size`` raw frames into one."""
    if spec.family == "qwen2_vl":
        return frames // spec.config().vision_config.temporal_patch_size
    return frames


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def run_model_bench(
    shape: str = "tiny",
    *,
    frames: int | None = None,
    methods: Sequence[str] = ("vanilla", "hieravid"),
    budgets: Sequence[float] = (0.3, 0.2, 0.1),
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    repeats: int = 3,
    warmup: int = 2,
    new_tokens: int = 8,
    allow_cpu: bool = False,
    cpu_malloc: str = "keep",
    scenes: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    on_round: Callable[["ModelBenchResult"], None] | None = None,
    skip_unreachable: bool = False,
) -> ModelBenchResult:
    """Measure every method at every budget on one random-weight model of ``shape``.

    Args:
        shape: a key of :data:`SHAPES`.
        frames: raw frames of the video (default: the shape's); Qwen2-VL takes two per temporal group.
        methods: names from :func:`hieravid.methods.available` or specs with options
            (``hieravid:greedy_backend=torch``, see :func:`hieravid.methods.parse_method`), plus ``unpatched`` (the model without
            ``hieravid.apply``); ``vanilla`` (``apply`` with nothing pruned) is always measured, once, at
            budget 1, and is the reference of every ratio.
        budgets: relative token budgets in (0, 1] for every pruning method.
        device: ``cpu`` or ``cuda``.
        dtype: weights and activations (default: :func:`default_dtype`, bfloat16 on CUDA and for the 7B
            shapes, float32 for the small shapes on CPU). Weights that do not fit the device's free
            memory are refused before anything is built.
        repeats: timed rounds; every round measures every (method, budget) once, interleaved (the order
            rotates from round to round). Medians are reported.
        warmup: untimed rounds before them (on CPU, memory is measured in those after the first; in the
            only one when there is one).
        new_tokens: greedy tokens generated per measurement (>= 2: decode time needs a second token).
        allow_cpu: run a 7B shape on CPU anyway.
        cpu_malloc: on CPU, ``keep`` (glibc keeps freed memory for reuse, see :func:`keep_freed_memory`;
            for the rest of the process) or ``default`` (the C library as it is).
        scenes: plant this many scenes in the video's features (:func:`plant_scenes`; the tower still runs
            and is timed every round); None: the tower's own output, as it is.
        progress: called with one line per measurement.
        on_round: called after every timed round with the result of the rounds so far (to save it).
        skip_unreachable: leave out, with a warning and a line in ``skipped``, a (method, budget) that
            ``hieravid.apply`` refuses on this model (a budget below the method's smallest on its depth,
            such as FastV's ``K / L``) or that its first prefill refuses on this video (DyCoke's frames,
            PruneVid's merge) instead of failing; ``--methods all`` sets it.

    An interruption (Ctrl-C) after at least one timed round returns the completed rounds, marked
    ``interrupted``; the round it stopped in is dropped, so every method has the same rounds.

    Returns:
        A :class:`ModelBenchResult` (times in ms, memory in bytes).
    """
    spec = _shape(shape)
    dev = bench_device(device)
    if spec.needs_gpu and dev.type != "cuda" and not allow_cpu:
        raise ValueError(
            f"shape {shape} is a 7B model meant for a GPU (about 17 GB of bfloat16 weights; a prefill of "
            "2k tokens takes tens of seconds on a 2-core CPU with bf16 matrix units, AMX, and minutes "
            "without): use --device cuda, a smaller shape (tiny, mini), or --allow-cpu to run it anyway"
        )
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 (decode time per token needs a second token), got {new_tokens}")
    known = set(available()) | {UNPATCHED}
    unknown = [m for m in methods if parse_method(m)[0] not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
    with_options = [m for m in methods if parse_method(m)[0] == UNPATCHED and m != UNPATCHED]
    if with_options:
        raise ValueError(f"{UNPATCHED} (the model without hieravid.apply) takes no options, got {with_options[0]!r}")
    for method in methods:
        if method != UNPATCHED:
            build(method, 1.0)  # its options, before the build (budgets are checked on the model's depth)
    check_choice(cpu_malloc, "cpu_malloc", ("keep", "default"))
    budgets = [check_budget(b) for b in budgets]
    warn_if_budget_is_ignored(list(methods), budgets)
    # Before the build, which takes a minute at the 7B shapes.
    _check_frames(shape, spec, spec.frames if frames is None else frames)
    if scenes is not None:
        _check_scenes(scenes, _model_frames(spec, spec.frames if frames is None else frames))
    dtype = dtype or default_dtype(shape, dev)
    check_weights_fit(shape, dev, dtype)
    say = progress or (lambda line: None)

    methods = list(dict.fromkeys(methods))  # each measured once; budgets as ModelBenchResult.get tells them apart
    budgets = [b for i, b in enumerate(budgets) if not any(math.isclose(b, a) for a in budgets[:i])]
    configs: list[tuple[str, float]] = [("vanilla", 1.0)]
    configs += [(m, 1.0) for m in methods if m == UNPATCHED]
    configs += [(m, b) for m in methods if m not in ("vanilla", UNPATCHED) for b in budgets]
    skipped: list[str] = []

    def leave_out(name: str, budget: float, exc: ValueError) -> None:
        if not skip_unreachable or name == "vanilla":
            raise exc
        configs.remove((name, budget))
        skipped.append(f"{name}@{budget:g}: {exc}")
        warnings.warn(f"not measured: {name} at budget {budget:g}: {exc}", HieravidWarning, stacklevel=3)

    # What hieravid.apply would refuse fails now, not after the build (a minute at the 7B shapes) nor midway:
    # an unreachable budget (e.g. FastV below K / L), from the decoder's depth in the shape's config, or a
    # greedy loop that cannot run on the device (compiled here, as apply does).
    depth = spec.config().get_text_config().num_hidden_layers
    for name, budget in list(configs):
        if name == UNPATCHED:
            continue
        try:
            method = build(name, budget)
            method.decision_layers(depth)
            method.prepare(dev)
        except ValueError as exc:
            leave_out(name, budget, exc)

    if dev.type == "cuda":
        allocator = "torch's CUDA caching allocator"
    elif cpu_malloc == "keep":
        allocator = keep_freed_memory() or "the C library's malloc as it is (not glibc, or mallopt refused)"
    elif _kept is not None:  # asked for the default, but an earlier run in this process changed it for good
        allocator = _kept + " (set by an earlier run in this process; it cannot be undone)"
    else:
        allocator = "the C library's malloc as it is (--cpu-malloc default)"
    load_start = _load_average()
    watch = CpuWatch()
    say(f"building {shape} on {dev} ({dtype}) ...")
    model = build_bench_model(shape, device=dev, dtype=dtype, seed=seed)
    inputs = build_bench_inputs(shape, model, frames, seed=seed)
    adapter, multimodal = find_adapter(model)
    text_model = adapter.text_model
    num_layers = adapter.num_layers

    encode = multimodal.get_video_features
    encode_kwargs = _encoder_kwargs(encode, inputs)
    planted: Any = None  # the planted features, built once from the first round's output
    samples: dict[tuple[str, float], list[dict[str, Any]]] = {c: [] for c in configs}
    vision_runs: list[float] = []
    stats_of: dict[tuple[str, float], Any] = {}
    # On CPU the memory measurement's reset slows the call after it: measure memory in the warm-up rounds,
    # after the first when there are two or more (a method's first call also allocates what it keeps).
    memory_apart = dev.type != "cuda" and warmup > 0
    first_memory_round = 1 if warmup >= 2 else 0
    memory_of: dict[tuple[str, float], list[dict[str, Any]]] = {c: [] for c in configs}
    recorder = _Recorder(model, text_model, dev)
    height, width = SHAPES[shape].frame_size

    def assemble(interrupted: bool = False) -> ModelBenchResult:
        """The result of the timed rounds completed so far."""
        vanilla_stats = stats_of[("vanilla", 1.0)]
        results = [_summarise(name, budget, samples[(name, budget)], stats_of[(name, budget)], vanilla_stats,
                              memory_of[(name, budget)] if memory_apart else None)
                   for name, budget in configs]
        _relate(results)
        return ModelBenchResult(
            machine=machine_description(dev),
            device=str(dev),
            dtype=str(dtype).replace("torch.", ""),
            torch_version=torch.__version__,
            torch_threads=torch.get_num_threads(),
            shape=shape,
            shape_description=spec.description,
            frames=spec.frames if frames is None else frames,
            frame_size=[height, width],
            visual_tokens=vanilla_stats.visual_tokens[0],
            text_tokens=vanilla_stats.text_tokens[0],
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            num_layers=num_layers,
            vision_ms=_median(vision_runs),
            vision_runs_ms=list(vision_runs),
            vision_note=(
                "the vision tower (random weights, this shape's config) runs once per round, timed alone; "
                "inside the timed generate calls its cached output is returned, so prefill and decode "
                "exclude it and TTFT adds the round's vision time"
            ),
            repeats=len(vision_runs),
            warmup=warmup,
            new_tokens=new_tokens,
            memory_note=(
                "torch.cuda.max_memory_allocated during prefill minus allocated before"
                if dev.type == "cuda"
                else "growth of the peak resident set size (VmHWM, reset via /proc/self/clear_refs after "
                     "malloc_trim) during prefill over the resident size before it; memory the allocator "
                     "still caches can hide part of it; "
                     + ("measured in the warm-up rounds, so that the reset (which makes the next call "
                        "page-fault on its allocations) stays out of the timed ones"
                        + (", after the first (where each method's first call also allocates what it keeps)"
                           if first_memory_round else
                           " (one: it includes what each method's first call allocates and keeps; "
                           "--warmup 2 leaves that out)")
                        if memory_apart
                        else "measured in the timed rounds (no warm-up), whose times include the reset's cost")
            ),
            allocator_note=allocator,
            load_average=[load_start, _load_average()],
            others_cpu=watch.others_share(),
            cpu_count=os.cpu_count(),
            scenes=scenes,
            skipped=skipped,
            results=results,
            repeats_asked=repeats,
            interrupted=interrupted,
        )

    try:
        with torch.no_grad():
            for round_idx in range(warmup + repeats):
                timed = round_idx >= warmup
                label = f"round {round_idx + 1 - warmup}/{repeats}" if timed else f"warm-up {round_idx + 1}/{warmup}"
                start = device_clock(dev)
                features = encode(**encode_kwargs)
                vision_seconds = device_clock(dev) - start
                if scenes is not None:  # the same planted video every round, at the first round's scale
                    if planted is None:
                        layout = adapter.video_layouts(CallContext(dict(inputs)), inputs["input_ids"].shape[0])[0]
                        planted = plant_scenes(features, layout.num_frames, layout.num_slots, scenes, seed)
                    features = planted
                say(f"{label}: vision {1000 * vision_seconds:.1f} ms")
                multimodal.get_video_features = _cached_encoder(encode, features)
                this_round: dict[tuple[str, float], tuple[dict[str, Any], Any]] = {}
                # see the module docstring (peak_memory)
                memory = not memory_apart or (not timed and round_idx >= first_memory_round)
                try:
                    shift = round_idx % len(configs)
                    for name, budget in configs[shift:] + configs[:shift]:
                        try:
                            sample, stats = _measure(model, inputs, name, budget, new_tokens, recorder, dev, memory)
                        except ValueError as exc:  # a budget this video cannot give: refused at the first call
                            if round_idx > 0:
                                raise
                            leave_out(name, budget, exc)
                            del samples[(name, budget)], memory_of[(name, budget)]
                            continue
                        if memory_apart and memory:
                            memory_of[(name, budget)].append(sample)
                        sample["ttft_ms"] += 1000 * vision_seconds
                        this_round[(name, budget)] = sample, stats
                        say(
                            f"{label}: {name:<12} {budget:<4g} prefill {sample['prefill_ms']:9.1f} ms  "
                            f"decide {sample['decide_ms']:7.1f} ms  decode {sample['decode_ms_per_token']:7.1f} ms/token"
                        )
                    if memory_apart and round_idx == warmup - 1:
                        # Each memory measurement hands freed memory back to the system; the last one leaves
                        # the heap at its own method's size. One unmeasured vanilla call (the largest
                        # activations) grows it back, so the first timed call does not page-fault for it.
                        _measure(model, inputs, "vanilla", 1.0, 2, recorder, dev, False)
                finally:
                    del multimodal.get_video_features  # back to the class method
                if timed:  # a round counts whole or not at all: every method is measured the same times
                    for config, (sample, stats) in this_round.items():
                        samples[config].append(sample)
                        stats_of[config] = stats
                    vision_runs.append(1000 * vision_seconds)  # last: the rounds counted are complete
                    if on_round is not None:
                        on_round(assemble())
    except KeyboardInterrupt:
        if not vision_runs:
            raise  # not one timed round: nothing to report
        if len(vision_runs) == repeats:  # in the last round's save: the run is complete
            return assemble()
        say(f"interrupted: reporting the {len(vision_runs)} of {repeats} timed rounds completed")
        return assemble(interrupted=True)
    finally:
        recorder.remove()
    return assemble()


def _measure(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    name: str,
    budget: float,
    new_tokens: int,
    recorder: _Recorder,
    device: torch.device,
    memory: bool = True,
) -> tuple[dict[str, Any], Any]:
    """One generate call of one (method, budget): times (ms), memory (bytes, when ``memory``) and cache
    (bytes), and its stats."""
    handle = None if name == UNPATCHED else hieravid.apply(model, name, budget)
    try:
        recorder.reset(memory)
        start = device_clock(device)
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        end = device_clock(device)
        stats = None if handle is None else handle.last_stats
    finally:
        if handle is not None:
            handle.remove()
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    if generated != new_tokens or recorder.first_forward_end is None or recorder.prefill_seconds is None:
        raise RuntimeError(f"{name}: expected {new_tokens} new tokens and one prefill, got {generated}")
    if recorder.cache is None:
        raise RuntimeError(f"{name}: the prefill returned no cache whose size could be read")
    first = recorder.first_forward_end - start
    sample = {
        "prefill_ms": 1000 * recorder.prefill_seconds,
        "ttft_ms": 1000 * first,
        "decode_ms_per_token": 1000 * (end - start - first) / (new_tokens - 1),
        "decide_ms": 0.0 if stats is None else 1000 * stats.decide_seconds,
        "decide_ms_by_layer": {} if stats is None else {
            str(layer): 1000 * seconds for layer, seconds in stats.decide_seconds_by_layer.items()
        },
        "peak_memory_bytes": recorder.peak_bytes,
        "peak_memory_total_bytes": recorder.peak_total_bytes,
        "prefill_page_faults": recorder.prefill_faults,
        "cache": recorder.cache,
    }
    return sample, stats


def _summarise(
    name: str, budget: float, runs: list[dict[str, Any]], stats: Any, vanilla_stats: Any,
    memory_runs: list[dict[str, Any]] | None = None,
) -> MethodResult:
    """One (method, budget)'s medians; peak memory from ``memory_runs`` where it was measured apart."""
    stats = stats or vanilla_stats  # unpatched: the same tokens as vanilla
    kv_total, per_token, layers = runs[-1]["cache"]
    kv_text = stats.text_tokens[0] * per_token * layers

    def median_of(key: str) -> float:
        return _median([r[key] for r in runs])

    def median_count(key: str, of: list[dict[str, Any]]) -> int | None:
        values = [r[key] for r in of if r[key] is not None]
        return int(statistics.median(values)) if values else None

    def median_bytes(key: str) -> int | None:
        return median_count(key, runs if memory_runs is None else memory_runs)

    return MethodResult(
        method=name,
        budget=budget,
        achieved_budget=stats.achieved_budget,
        tokens_per_layer=list(stats.tokens_per_layer),
        flops_exact=stats.flops.exact,
        flops_vanilla_exact=stats.flops.vanilla_exact,
        prefill_ms=median_of("prefill_ms"),
        ttft_ms=median_of("ttft_ms"),
        decode_ms_per_token=median_of("decode_ms_per_token"),
        decide_ms=median_of("decide_ms"),
        peak_memory_bytes=median_bytes("peak_memory_bytes"),
        peak_memory_total_bytes=median_bytes("peak_memory_total_bytes"),
        kv_bytes=kv_total,
        kv_text_bytes=kv_text,
        kv_visual_bytes=kv_total - kv_text,
        prefill_page_faults=median_count("prefill_page_faults", runs),
        prefill_runs_ms=[r["prefill_ms"] for r in runs],
        ttft_runs_ms=[r["ttft_ms"] for r in runs],
        decode_runs_ms_per_token=[r["decode_ms_per_token"] for r in runs],
        decide_runs_ms=[r["decide_ms"] for r in runs],
        decide_ms_by_layer=_median_by_layer([r["decide_ms_by_layer"] for r in runs]),
        theoretical_speedup=stats.flops.vanilla_exact / stats.flops.exact,
        segments=stats.per_sample_segments[0],
    )


def _median_by_layer(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per decision point, the median over the runs that ran it (a method may skip a point it has no use
    for: see ``PruningMethod.active``), in layer order."""
    layers = sorted({layer for run in runs for layer in run}, key=int)
    return {layer: _median([run[layer] for run in runs if layer in run]) for layer in layers}


def _relate(results: list[MethodResult]) -> None:
    """Fill the ratios against vanilla (the first result)."""
    vanilla = results[0]
    for r in results:
        r.speedup = vanilla.prefill_ms / r.prefill_ms
        r.ttft_speedup = vanilla.ttft_ms / r.ttft_ms
        r.efficiency = r.speedup / r.theoretical_speedup
        r.decide_pct_of_vanilla_prefill = 100 * r.decide_ms / vanilla.prefill_ms
        r.kv_visual_ratio = r.kv_visual_bytes / vanilla.kv_visual_bytes if vanilla.kv_visual_bytes else 1.0


# ------------------------------------------------------------------------------------------- report


@dataclass
class Goal:
    """One checked goal: what, the numbers, pass or fail."""

    name: str
    passed: bool
    detail: str


def check_goals(result: ModelBenchResult, method: str = "hieravid", budget: float = 0.3) -> list[Goal]:
    """The issue's goals for ``method``: at ``budget``, measured speed-up >= 0.85 x theoretical and visual
    KV bytes <= (achieved budget + 0.05) x vanilla's; at every budget, deciding <= 3 % of vanilla's
    prefill and <= 1.5 x the cheapest other pruning method's deciding time at that budget."""
    goals: list[Goal] = []
    mine = [r for r in result.results if r.method == method]
    if not mine:
        return goals
    # The baselines: other methods, not this one's variants (name:options) or ablations (name_...).
    family = parse_method(method)[0]
    others = [r for r in result.results if r.method not in ("vanilla", UNPATCHED)
              and not parse_method(r.method)[0].startswith(family)]
    at = [r for r in mine if math.isclose(r.budget, budget)]
    if at:
        r = at[0]
        goals.append(Goal(
            f"{method}@{budget:g} speed-up >= 0.85 x theoretical",
            r.efficiency >= 0.85,
            f"{r.speedup:.2f}x measured / {r.theoretical_speedup:.2f}x theoretical = {r.efficiency:.2f}",
        ))
        limit = r.achieved_budget + 0.05
        goals.append(Goal(
            f"{method}@{budget:g} visual KV <= (achieved + 0.05) x vanilla",
            r.kv_visual_ratio <= limit,
            f"{r.kv_visual_ratio:.3f} of vanilla's visual KV, limit {limit:.3f}",
        ))
    for r in mine:
        if r.budget >= 1.0:  # nothing is decided at budget 1
            continue
        goals.append(Goal(
            f"{method}@{r.budget:g} deciding <= 3% of vanilla prefill",
            r.decide_pct_of_vanilla_prefill <= 3.0,
            f"{r.decide_ms:.1f} ms = {r.decide_pct_of_vanilla_prefill:.2f}%",
        ))
        rivals = [o for o in others if math.isclose(o.budget, r.budget)]
        if rivals:
            cheapest = min(rivals, key=lambda o: o.decide_ms)
            goals.append(Goal(
                f"{method}@{r.budget:g} deciding <= 1.5 x cheapest baseline",
                r.decide_ms <= 1.5 * cheapest.decide_ms,
                f"{r.decide_ms:.1f} ms vs {cheapest.method} {cheapest.decide_ms:.1f} ms "
                f"({r.decide_ms / cheapest.decide_ms if cheapest.decide_ms else math.inf:.1f}x)",
            ))
    return goals


def _mb(value: int | None) -> str:
    if value is None:
        return "n/a"
    mib = value / 2**20
    return f"{mib:.0f}" if abs(mib) >= 10 else f"{mib:.2f}"


def _contention_line(result: ModelBenchResult) -> str:
    """The load average, and the CPU time other processes took during the run where it was measured
    (then the judge of reliability; else a load average of 0.75 per core at the start is)."""
    line = f"load average (1 min) at start / end: {result.load_average[0]} / {result.load_average[1]}"
    if result.others_cpu is None:  # the load per core of the machine that measured (if it said how many)
        busy = (result.load_average[0] or 0) >= 0.75 * (result.cpu_count or os.cpu_count() or 1)
    else:
        line += (f"; others (other processes, a hypervisor's steal) took {100 * result.others_cpu:.1f}% of "
                 "the CPUs' time during the run")
        busy = busy_elsewhere(result.others_cpu)
    return line + (" -- other processes were running: timings are unreliable" if busy else "")


def _faults_summary(result: ModelBenchResult) -> str:
    """Vanilla's page faults per prefill and the most of any pruned (method, budget)."""
    vanilla = result.results[0]
    pruned = [r for r in result.results[1:] if r.prefill_page_faults is not None]
    if vanilla.prefill_page_faults is None:
        return "page faults not measured"
    text = f"minor page faults per prefill (median): vanilla {vanilla.prefill_page_faults}"
    if pruned:
        most = max(pruned, key=lambda r: r.prefill_page_faults)
        text += f", at most {most.prefill_page_faults} for the others ({most.method}@{most.budget:g})"
    return text


def _partial_note(result: ModelBenchResult) -> str:
    """What the protocol line adds for a run with fewer timed rounds than asked: stopped by Ctrl-C, or saved
    by ``--json`` after a round of a run that was killed (or is still going)."""
    done = f"{result.repeats} of {result.repeats_asked} timed rounds"
    if result.interrupted:
        return f" (INTERRUPTED: {done})"
    if result.repeats_asked is not None and result.repeats < result.repeats_asked:
        return f" (INCOMPLETE: {done}; saved after a round of a run that was stopped or is still going)"
    return ""


def format_report(result: ModelBenchResult) -> str:
    """A plain-text report: machine, shape, token counts, one table row per (method, budget), goals."""
    lines = [
        f"machine: {result.machine}",
        f"device: {result.device}, {result.dtype}",
        f"shape: {result.shape}: {result.shape_description}",
        f"input: {result.frames} frames of {result.frame_size[0]}x{result.frame_size[1]} -> "
        f"{result.visual_tokens} visual + {result.text_tokens} text tokens ({result.prompt_tokens} in the prompt), "
        f"{result.num_layers} decoder layers",
        f"vision tower: {result.vision_ms:.1f} ms (median; measured apart, added to TTFT only)",
        "video features: "
        + ("the vision tower's output (random weights)" if result.scenes is None else
           f"{result.scenes} planted scene{'s' if result.scenes != 1 else ''} (a random frame per scene at the "
           "tower output's scale, each frame "
           f"of a scene that frame plus {_SCENE_NOISE:.0%} noise), in place of the tower's output"),
        f"protocol: {result.warmup} warm-up + {result.repeats} timed rounds, methods interleaved, medians; "
        f"{result.new_tokens} new tokens per generate"
        + _partial_note(result),
        f"allocator: {result.allocator_note}; {_faults_summary(result)}",
        f"peak memory: {result.memory_note}",
        _contention_line(result),
        "",
        "| method | budget | achieved | tokens L0 | prefill ms | speed-up | theory | eff. | decide ms | "
        "decide % | TTFT ms | decode ms/tok | peak MiB | KV MiB | visual KV MiB | visual KV ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.results:
        lines.append(
            f"| {r.method} | {r.budget:g} | {r.achieved_budget:.3f} | {r.tokens_per_layer[0]} | "
            f"{r.prefill_ms:.0f} | {r.speedup:.2f}x | {r.theoretical_speedup:.2f}x | {r.efficiency:.2f} | "
            f"{r.decide_ms:.1f} | {r.decide_pct_of_vanilla_prefill:.2f} | {r.ttft_ms:.0f} | "
            f"{r.decode_ms_per_token:.1f} | {_mb(r.peak_memory_bytes)} | {_mb(r.kv_bytes)} | "
            f"{_mb(r.kv_visual_bytes)} | {r.kv_visual_ratio:.3f} |"
        )
    segmented = [r for r in result.results if r.segments is not None]
    if segmented:
        lines += ["", "segments found in the video (the DPP builds one kernel block per segment, n_i^2 d each): "
                  + ", ".join(f"{r.method}@{r.budget:g} {r.segments}" for r in segmented)]
    staged = [r for r in result.results if len(r.decide_ms_by_layer) > 1]
    if staged:
        lines += ["", "deciding per decision point (median ms; Lk: before decoder layer k, L0: before the LLM; "
                  "each point's own median, so they need not add up to the decide column's):"]
        lines += [f"  {r.method}@{r.budget:g}: " + ", ".join(f"L{layer} {ms:.1f}" for layer, ms in
                                                          r.decide_ms_by_layer.items()) for r in staged]
    if result.skipped:
        lines += ["", "not measured (the method cannot reach the budget on this model or video):"]
        lines += [f"  {line}" for line in result.skipped]
    goals = check_goals(result)
    if goals:
        lines += ["", "goals (hieravid):"]
        lines += [f"  [{'pass' if g.passed else 'FAIL'}] {g.name}: {g.detail}" for g in goals]
        if not any(r.method == "hieravid" and math.isclose(r.budget, 0.3) for r in result.results):
            lines.append("  (not checked: the speed-up and KV goals at budget 0.3, which this run did not measure)")
    return "\n".join(lines)


def plot_report(result: ModelBenchResult, path: str | os.PathLike) -> Any:
    """Two panels against the budget: measured prefill speed-up (dotted, hollow markers: theoretical) and
    visual KV-cache size, one line per method; vanilla (and ``unpatched``, when measured) as horizontal
    references. Written as a PNG by the figure's own Agg canvas (the caller's matplotlib backend is left
    alone).

    Returns the matplotlib figure."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vanilla = result.results[0]
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    ax_speed, ax_kv = fig.subplots(1, 2)
    methods = [m for m in dict.fromkeys(r.method for r in result.results) if m not in ("vanilla", UNPATCHED)]
    # Ten distinct hues (tab20 pairs similar ones) while they suffice, then 20, then a new marker for each
    # further round of colours: every method its own style.
    colors = matplotlib.colormaps["tab10" if len(methods) <= 10 else "tab20"].colors
    markers = "osD^v"
    for i, name in enumerate(methods):
        rows = sorted((r for r in result.results if r.method == name), key=lambda r: r.budget)
        x = [r.budget for r in rows]
        color, marker = colors[i % len(colors)], markers[(i // len(colors)) % len(markers)]
        ax_speed.plot(x, [r.speedup for r in rows], marker + "-", color=color, label=f"{name} measured")
        # hollow markers: a run of one budget has no line to dot
        ax_speed.plot(x, [r.theoretical_speedup for r in rows], marker + ":", color=color, alpha=0.8,
                      markerfacecolor="none", label=f"{name} FLOPs")
        ax_kv.plot(x, [r.kv_visual_bytes / 2**20 for r in rows], marker + "-", color=color, label=name)
    ax_speed.axhline(1.0, color="gray", lw=1, ls="--", label="vanilla")
    ax_kv.axhline(vanilla.kv_visual_bytes / 2**20, color="gray", lw=1, ls="--", label="vanilla")
    references = 1
    for r in result.results:
        if r.method == UNPATCHED:  # the model without the runtime: what the runtime itself costs vanilla
            references += 1
            for ax, y in ((ax_speed, r.speedup), (ax_kv, r.kv_visual_bytes / 2**20)):
                ax.axhline(y, color="black", lw=1, ls="-.", label=f"{UNPATCHED} (no hieravid.apply)")
    ax_speed.set(xlabel="relative token budget B", ylabel="prefill speed-up over vanilla (x)",
                 title="Prefill speed-up (solid: measured; dotted, hollow: exact FLOPs)")
    ax_kv.set(xlabel="relative token budget B", ylabel="visual KV cache after prefill (MiB)",
              title="Visual KV cache after prefill")
    for ax in (ax_speed, ax_kv):
        ax.grid(alpha=0.3)
        # From 0 to a tenth above the highest line, so that a reference on top (vanilla alone) stays in view.
        highest = max((max(line.get_ydata(), default=0.0) for line in ax.get_lines()), default=0.0)
        ax.set_ylim(0, 1.1 * highest if highest > 0 else 1.0)
    # One legend for both panels, below them: a method has the same colour and marker in each.
    columns = min(len(methods) + references, 6)
    rows = -(-(len(methods) + references) // columns)
    handles, labels = ax_kv.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.set_size_inches(12, 4.8 + 0.25 * rows)
    fig.suptitle(
        f"{result.shape}: {result.visual_tokens} visual tokens, {result.device} {result.dtype} "
        f"({result.machine})", fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))  # room for the legend
    save_figure(fig, path, dpi=120)
    return fig
