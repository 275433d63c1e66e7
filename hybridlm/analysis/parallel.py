"""Memory and communication per device for a parallel layout (tp x pp x dp), from the config alone.

Per device, for training with AdamW:
    weights    split parameters / tp (attention and Mamba by heads, MLPs and experts by channels;
               parallel/tensor.py), replicated ones whole (embeddings, norms, routers, LM head, the
               biases after a row-parallel matmul); a pipeline stage holds its blocks only (the first
               stage the embedding, the last the final norm and head); / dp with FSDP (ZeRO-3)
    gradients  as the weights, / dp with ZeRO-2 or ZeRO-3
    optimizer  AdamW's two float32 moments, / dp with ZeRO-2 or ZeRO-3
    activations what backward keeps, per micro-batch, without recomputation: Korthikanti et al. 2022
               (Reducing Activation Recomputation, Sec. 4.1) per Transformer layer
               s*b*h*(34 + 5*a*s/h) bytes in 16-bit, here split into attention 11 (+5as/h unless
               flash attention, which SDPA is), MLP 19 and norms 4 (x d_ff/4h for the MLP), with
               the tp-split parts / tp; a Mamba block keeps its in_proj output, conv output, scan
               output and gate (Dao & Gu 2024's layer, no recompute); times the micro-batches a
               1F1B pipeline stage holds at once (pp)
    cache      for inference: KV heads and Mamba heads / tp, layers / pp
Communication per optimizer step, bytes each device sends (ring algorithms: an all-reduce of S bytes
sends 2 (n-1)/n S, an all-gather or reduce-scatter (n-1)/n S):
    tp   every split block all-reduces its (b, s, d_model) output in forward and its input's
         gradient in backward: 2 all-reduces per split block per micro-batch
    dp   DDP all-reduces the gradients once; FSDP all-gathers weights in forward and backward and
         reduce-scatters gradients
    pp   each stage boundary sends a (b, s, d_model) activation forward and its gradient back per
         micro-batch
tests/analysis/test_parallel.py holds the weight split against the real split modules, and the
gloo tests count the tensor-parallel all-reduces with torch's CommDebugMode.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from ..config import ModelConfig
from .memory import block_parameters, cache_bytes, dtype_bytes, norm_parameters

ZERO = ("ddp", "zero2", "zero3")  # what the data-parallel dimension shards: nothing, grads+optimizer, everything


@dataclass(frozen=True)
class ParallelSetup:
    tp: int = 1  # tensor-parallel ranks
    pp: int = 1  # pipeline stages
    dp: int = 1  # data-parallel replicas
    zero: str = "ddp"  # ddp | zero2 | zero3 (FSDP2: hybridlm train --fsdp)
    seq_len: int = 4096  # tokens per sequence
    micro_batch: int = 1  # sequences per micro-batch on each replica
    grad_accum: int = 1  # micro-batches per optimizer step (>= pp keeps a pipeline busy)
    param_dtype: str = "bfloat16"  # weights and gradients as stored on the device
    act_dtype: str = "bfloat16"  # activations
    flash_attention: bool = True  # attention scores are not kept (SDPA's flash / memory-efficient kernels)

    def __post_init__(self):
        if min(self.tp, self.pp, self.dp, self.seq_len, self.micro_batch, self.grad_accum) < 1:
            raise ValueError("tp, pp, dp, seq_len, micro_batch and grad_accum must be at least 1")
        if self.zero not in ZERO:
            raise ValueError(f"zero must be one of {ZERO}, got {self.zero!r}")

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp


def _linear(n_in: int, n_out: int, bias: bool) -> tuple[int, int]:
    return n_in * n_out, (n_out if bias else 0)


def _mlp_split(cfg: ModelConfig, d_ff: int) -> tuple[int, int]:
    """(split, replicated) parameters of one MLP under TP."""
    width = 2 * d_ff if cfg.mlp.endswith("glu") else d_ff
    w_in, b_in = _linear(cfg.d_model, width, cfg.mlp_bias)
    w_out, b_out = _linear(d_ff, cfg.d_model, cfg.mlp_bias)
    return w_in + b_in + w_out, b_out


def mixer_split(cfg: ModelConfig, kind: str) -> tuple[int, int]:
    """(split, replicated) parameters of one block of `kind`, its norm included (replicated)."""
    if kind == "attention":
        qkv, qkv_b = _linear(cfg.d_model, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, cfg.qkv_bias)
        wo, wo_b = _linear(cfg.n_heads * cfg.head_dim, cfg.d_model, cfg.attn_out_bias)
        split, rep = qkv + qkv_b + wo, wo_b + (2 * cfg.head_dim if cfg.qk_norm else 0)
    elif kind == "mlp":
        split, rep = _mlp_split(cfg, cfg.d_ff)
    elif kind == "moe":
        s, r = _mlp_split(cfg, cfg.moe_d_ff)
        split, rep = cfg.n_experts * s, cfg.n_experts * r + cfg.d_model * cfg.n_experts  # + router
        if cfg.moe_shared_expert_d_ff:
            s, r = _mlp_split(cfg, cfg.moe_shared_expert_d_ff)
            split, rep = split + s, rep + r
    else:  # mamba: all but out_proj's bias splits by heads and groups
        total = block_parameters(cfg, "mamba") - norm_parameters(cfg)
        rep = cfg.d_model if cfg.mamba_proj_bias else 0
        split = total - rep
    return split, rep + norm_parameters(cfg)


def stage_blocks(n_blocks: int, pp: int) -> list[range]:
    """Contiguous blocks of each pipeline stage, as even as counts allow (earlier stages one more)."""
    if pp > n_blocks:
        raise ValueError(f"--pp {pp} exceeds the model's {n_blocks} blocks")
    base, extra = divmod(n_blocks, pp)
    starts = [s * base + min(s, extra) for s in range(pp + 1)]
    return [range(starts[s], starts[s + 1]) for s in range(pp)]


def stage_parameters(cfg: ModelConfig, tp: int, pp: int) -> list[int]:
    """Parameters one device of each pipeline stage holds under tp-way tensor parallelism."""
    emb = cfg.vocab_size * cfg.d_model + (cfg.max_seq_len * cfg.d_model if cfg.position == "learned" else 0)
    head = (cfg.vocab_size * cfg.d_model if (not cfg.tie_embeddings or pp > 1) else 0) + \
        (norm_parameters(cfg) if cfg.norm_position == "pre" else 0)  # a tied head is a copy on the last stage
    out = []
    for s, blocks in enumerate(stage_blocks(len(cfg.blocks), pp)):
        n = 0
        for i in blocks:
            split, rep = mixer_split(cfg, cfg.blocks[i])
            n += split // tp + rep
        n += emb if s == 0 else 0
        n += head if s == pp - 1 else 0
        out.append(n)
    return out


def _activation_bytes_per_token(cfg: ModelConfig, kind: str, tp: int, seq_len: int, flash: bool, b: int) -> float:
    """Bytes one token keeps for backward in one block (16-bit activations: b = 2)."""
    h = cfg.d_model
    if kind == "attention":  # Korthikanti: 11 sbh (+ 5 a s^2 b); q, k, v, scores and output split
        per = h * (b + (11 - b) / tp)  # the block input (kept whole) and the split rest
        if not flash:
            per += 5 * cfg.n_heads * seq_len / tp
    elif kind in ("mlp", "moe"):  # 19 sbh for d_ff = 4h: input 2, the rest scales with d_ff
        d_ff = cfg.d_ff if kind == "mlp" else cfg.moe_d_ff * cfg.n_experts_per_token
        per = h * b + 17 * h * (d_ff / (4 * h)) / tp
        if kind == "moe":
            per += cfg.n_experts * 4 / tp + b * h  # router probabilities, gathered tokens
    else:  # mamba: input, in_proj output, conv output, scan output (float32), gate
        proj = 2 * cfg.mamba_d_inner + 2 * cfg.mamba_n_groups * cfg.d_state + cfg.mamba_n_heads
        per = h * b + (proj * b + cfg.mamba_conv_dim * b + cfg.mamba_d_inner * (4 + b)) / tp
    return per + 2 * h  # the block's norm: its input (Korthikanti's 4 sbh per two norms)


@dataclass
class DeviceMemory:
    params: int  # parameters on the fullest device
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int  # AdamW: two float32 moments (plus a float32 master copy for 16-bit weights)
    activation_bytes: int
    total_bytes: int
    comm_bytes_per_step: dict  # {"tp": bytes, "dp": bytes, "pp": bytes} each device sends per step
    inference_cache_bytes: int  # KV + Mamba state on one device at seq_len, micro_batch sequences

    def as_dict(self) -> dict:
        return asdict(self)


def device_memory(cfg: ModelConfig, setup: ParallelSetup) -> DeviceMemory:
    """The busiest device's memory and every device's traffic for `setup` (see the module docstring)."""
    tp, pp, dp = setup.tp, setup.pp, setup.dp
    p_bytes, a_bytes = dtype_bytes(setup.param_dtype), dtype_bytes(setup.act_dtype)
    stages = stage_parameters(cfg, tp, pp)
    busiest = max(range(pp), key=lambda s: stages[s])
    params = stages[busiest]
    shard_w = dp if setup.zero == "zero3" else 1
    shard_g = dp if setup.zero in ("zero2", "zero3") else 1
    master = 4 if p_bytes < 4 else 0  # mixed precision keeps float32 master weights beside the moments
    weights, grads = params * p_bytes / shard_w, params * p_bytes / shard_g
    optimizer = params * (8 + master) / shard_g
    tokens = setup.seq_len * setup.micro_batch
    acts = 0.0
    for s, blocks in enumerate(stage_blocks(len(cfg.blocks), pp)):
        per = sum(_activation_bytes_per_token(cfg, cfg.blocks[i], tp, setup.seq_len, setup.flash_attention, a_bytes)
                  for i in blocks)
        in_flight = min(pp - s, setup.grad_accum)  # 1F1B: stage s holds pp - s micro-batches
        acts = max(acts, per * tokens * in_flight)
    if busiest == pp - 1 or pp == 1:  # the logits in float32 for the loss
        acts += tokens * cfg.vocab_size * 4
    comm = communication(cfg, setup, params * p_bytes)
    cache = cache_bytes(cfg, setup.seq_len, setup.micro_batch, a_bytes)
    cache = int(cache / (tp * pp))
    total = weights + grads + optimizer + acts
    return DeviceMemory(params, int(weights), int(grads), int(optimizer), int(acts), int(total), comm, cache)


def tp_all_reduces(cfg: ModelConfig, tp: int) -> int:
    """All-reduces per micro-batch forward + backward under tp > 1: two per split matmul pair, so
    two per attention, MLP and Mamba block and two per expert (every expert that gets tokens)."""
    if tp == 1:
        return 0
    per_block = {"attention": 2, "mlp": 2, "mamba": 2,
                 "moe": 2 * (cfg.n_experts + (1 if cfg.moe_shared_expert_d_ff else 0))}
    return sum(per_block[k] for k in cfg.blocks)


def communication(cfg: ModelConfig, setup: ParallelSetup, stage_weight_bytes: float) -> dict:
    """Bytes one device sends per optimizer step, by dimension."""
    tp, pp, dp = setup.tp, setup.pp, setup.dp
    act = setup.seq_len * setup.micro_batch * cfg.d_model * dtype_bytes(setup.act_dtype)
    n_stage = max(len(r) for r in stage_blocks(len(cfg.blocks), pp))
    frac = n_stage / len(cfg.blocks)
    tp_bytes = tp_all_reduces(cfg, tp) * frac * act * 2 * (tp - 1) / tp * setup.grad_accum
    if setup.zero == "zero3":
        dp_bytes = (2 + 1) * stage_weight_bytes * (dp - 1) / dp  # all-gather fwd + bwd, reduce-scatter
    elif setup.zero == "zero2":
        dp_bytes = 2 * stage_weight_bytes * (dp - 1) / dp  # reduce-scatter grads, all-gather weights
    else:
        dp_bytes = 2 * stage_weight_bytes * (dp - 1) / dp  # ring all-reduce
    pp_bytes = 2 * act / tp * setup.grad_accum if pp > 1 else 0  # activation out, gradient back (split by tp: SP)
    return {"tp": int(tp_bytes), "dp": int(dp_bytes), "pp": int(pp_bytes)}


def tp_problem(cfg: ModelConfig, tp: int) -> str | None:
    """Why `tp` ranks cannot split `cfg` (parallel/tensor.py's plan), or None when they can."""
    if tp < 1:
        return f"--tp must be at least 1, got {tp}"
    if cfg.family != "decoder":
        return f"tensor parallelism covers decoder models; this is a {cfg.family} model"
    if tp == 1:
        return None
    kinds = set(cfg.blocks)
    rules = []
    if "attention" in kinds:
        if cfg.position == "alibi":
            return "tensor parallelism does not split ALiBi models (the slopes are per model, not per rank)"
        rules += [(cfg.n_heads, "n_heads"), (cfg.n_kv_heads, "n_kv_heads")]
    if "mlp" in kinds:
        rules.append((cfg.d_ff, "d_ff"))
    if "moe" in kinds:
        rules.append((cfg.moe_d_ff, "moe_d_ff"))
        if cfg.moe_shared_expert_d_ff:
            rules.append((cfg.moe_shared_expert_d_ff, "moe_shared_expert_d_ff"))
    if "mamba" in kinds:
        rules += [(cfg.mamba_n_heads, "mamba_n_heads"), (cfg.mamba_n_groups, "mamba_n_groups")]
    for value, name in rules:
        if value % tp:
            return (f"--tp {tp} does not divide {name} = {value}: each rank must hold whole heads, groups "
                    f"and channels (choose a tp that divides it)")
    return None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def fitting_layouts(cfg: ModelConfig, gpus: int, gpu_bytes: float, seq_len: int, micro_batch: int = 1,
                    max_tp: int = 8) -> list[tuple[ParallelSetup, DeviceMemory]]:
    """Every (tp, pp, dp, zero) over exactly `gpus` devices whose busiest device fits in gpu_bytes,
    least traffic first. tp stays within one node (max_tp) and must split the heads and groups."""
    out = []
    for tp, pp in itertools.product(_divisors(gpus), _divisors(gpus)):
        if tp > max_tp or gpus % (tp * pp) or pp > len(cfg.blocks) or tp_problem(cfg, tp):
            continue
        for zero in ZERO if gpus > tp * pp else ("ddp",):
            setup = ParallelSetup(tp=tp, pp=pp, dp=gpus // (tp * pp), zero=zero, seq_len=seq_len,
                                  micro_batch=micro_batch, grad_accum=max(pp, 1))
            mem = device_memory(cfg, setup)
            if mem.total_bytes <= gpu_bytes:
                out.append((setup, mem))
    return sorted(out, key=lambda sm: (sum(sm[1].comm_bytes_per_step.values()), sm[1].total_bytes))


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def format_device_memory(name: str, setup: ParallelSetup, m: DeviceMemory) -> str:
    """The per-device table `hybridlm analyze MODEL --tp N --pp M` prints."""
    lines = [f"{name}: tp {setup.tp} x pp {setup.pp} x dp {setup.dp} = {setup.world_size} devices, {setup.zero}, "
             f"seq_len {setup.seq_len}, micro-batch {setup.micro_batch}, {setup.grad_accum} micro-batches/step",
             f"  parameters per device  {m.params:,} (busiest pipeline stage)",
             f"  weights                {_gib(m.weight_bytes)} ({setup.param_dtype})",
             f"  gradients              {_gib(m.grad_bytes)}",
             f"  optimizer (AdamW)      {_gib(m.optimizer_bytes)} (float32 moments"
             f"{' and master weights' if dtype_bytes(setup.param_dtype) < 4 else ''})",
             f"  activations            {_gib(m.activation_bytes)} (no recomputation"
             f"{', flash attention' if setup.flash_attention else ''})",
             f"  total for training     {_gib(m.total_bytes)}",
             f"  inference cache        {_gib(m.inference_cache_bytes)} (KV + Mamba state at seq_len x micro-batch)",
             "  sent per step          " + ", ".join(f"{k} {_gib(v)}" for k, v in m.comm_bytes_per_step.items())]
    return "\n".join(lines)


def format_fitting(name: str, gpus: int, gpu_bytes: float, found: list, limit: int = 10) -> str:
    """The answer to "what layout fits this model on N GPUs of M GB", least traffic first."""
    if not found:
        return (f"{name}: no layout of {gpus} devices fits in {gpu_bytes / 1e9:g} GB each (try more devices, "
                "a shorter --seq-len, or activation checkpointing)")
    lines = [f"{name}: {len(found)} layouts of {gpus} devices fit in {gpu_bytes / 1e9:g} GB each; least traffic first",
             f"  {'tp':>3} {'pp':>3} {'dp':>3} {'zero':>6} {'memory/device':>14} {'sent/step':>12}"]
    for setup, m in found[:limit]:
        lines.append(f"  {setup.tp:>3} {setup.pp:>3} {setup.dp:>3} {setup.zero:>6} {m.total_bytes / 1e9:>11.1f} GB "
                     f"{sum(m.comm_bytes_per_step.values()) / 1e9:>9.2f} GB")
    return "\n".join(lines)
