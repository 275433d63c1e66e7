"""`generate`, `chat`, `info` and `convert`: running and describing models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

def _add_model_args(p: argparse.ArgumentParser, adapter: bool = True) -> None:
    p.add_argument("model", help="a registry name (e.g. smollm2-135m), a .gguf file or an HF checkpoint directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights and activations; auto = float32 on CPUs without native bf16, bfloat16 on CUDA; "
                        "on the CPU, auto also keeps a GGUF's Q4_0/Q4_1/Q8_0/Q4_K weights quantized (the file's own "
                        "precision, native kernels) while an explicit dtype dequantizes them")
    p.add_argument("--quant-act", default="fast", choices=["fast", "exact"],
                   help="activations of quantized layers: fast = int8 per block of 32 with integer dot products "
                        "(as llama.cpp; default), exact = float32 (the dequantized model's logits)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--linear", default="auto", choices=["auto", "packed", "ref"],
                   help="CPU float32 matmuls: packed = oneDNN-reordered weights, ref = nn.Linear, auto = whichever "
                        "a few-ms timing on the model's own layers finds faster on this CPU (reported on stderr)")
    p.add_argument("--compile", action="store_true",
                   help="decode through one torch.compile graph over a static cache: ~1.5-1.9x faster decoding "
                        "on the CPU (not MoE models); compiling takes ~1 min at start (less once inductor's disk cache is warm) "
                        "and the weights are held twice (once packed for prefill); ignores --linear")
    if adapter:
        p.add_argument("--adapter", default=None, metavar="DIR",
                       help="a LoRA adapter in PEFT's format (`hybridlm finetune lora` writes RUN_DIR/adapter): "
                            "merged into float weights, or kept beside quantized ones")


def _add_decode_step_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decode-step", default="auto", choices=["auto", "native", "eager"],
                   help="one-token steps of a quantized Llama-style model (the GGUF default on the CPU): native = "
                        "the whole token in one C++ call (kernels/decode_step.cpp), eager = the PyTorch model; auto "
                        "= native where it covers the model (batch 1, RoPE, SwiGLU, native quantized layers), else "
                        "eager; native refuses a model it does not cover, with the reason (default auto)")


def _add_sampling_args(p: argparse.ArgumentParser, default_max: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=default_max, help=f"tokens to generate (default {default_max})")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy decoding (default 0.8)")
    g.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass; 1 = off (default 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, help="drop tokens below min-p x the top probability (default 0.05)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style penalty; 1 = off")
    g.add_argument("--seed", type=int, default=None, help="fixes sampling: same seed, same output")
    g.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable); it is not printed")
    g.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence (benchmarks)")
    g.add_argument("--cache", default="static", choices=["static", "dynamic"],
                   help="KV cache: static = preallocated for prompt + max-new-tokens, dynamic = grows by doubling")
    g.add_argument("--kv-cache", default="auto", choices=["auto", "float", "float16", "int8"],
                   help="K/V storage: float = the model's dtype; float16 = half of float32's bytes (llama.cpp's "
                        "default K/V type); int8 = int8 with a float32 scale per head and token, ~1/4 of float32's "
                        "bytes, dequantized when attended over; auto = float16 where the native decode step runs "
                        "fast (int8) activations, as llama.cpp does, else float (default auto)")


def _add_speculative_args(p: argparse.ArgumentParser) -> None:
    # the spec's grammar is generation/proposers.py's SPEC_HELP, spelled out here so --help imports no torch
    g = p.add_argument_group("speculative decoding (same tokens when greedy, same distribution when sampling)")
    g.add_argument("--speculative", default=None, metavar="SPEC",
                   help="draft tokens, then verify them in one forward: prompt-lookup[:MAX_NGRAM] (n-grams of the "
                        "prompt and output, no draft model), draft:blocks:N (the model's own first N blocks, "
                        "sharing its weights) or draft:MODEL (a registry name, .gguf or HF directory with the "
                        "same tokenizer); acceptance and speed go to stderr")
    g.add_argument("--num-speculative-tokens", type=int, default=4, metavar="K",
                   help="most tokens proposed per target forward (default 4)")


# -- helpers ----------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(args):
    import torch

    from ..checkpoints.registry import load_model
    from ..device import resolve_device, resolve_dtype
    from ..generation.compiled import compile_decoder
    from ..nn.packed_linear import choose_linear_impl, pack_linears

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype, warning = resolve_dtype(args.dtype, device)
    if warning:
        _log(f"hybridlm: warning: {warning}")
    tp = getattr(args, "tp", 1)
    if tp > 1 and (args.compile or args.linear == "packed"):
        raise ValueError("--tp splits nn.Linear weights: drop --compile and --linear packed")
    if args.compile and args.cache != "static":
        raise ValueError("--compile needs the static cache (drop --cache dynamic)")
    if args.compile and getattr(args, "kv_cache", "auto") not in ("auto", "float"):
        raise ValueError(f"--kv-cache {args.kv_cache} runs eager only (drop --compile)")
    if args.compile and getattr(args, "decode_step", "auto") == "native":
        raise ValueError("--decode-step native and --compile are two ways to run the decode step: choose one")
    # a GGUF runs in its own precision, but only float weights split under --tp
    keep_quantized = args.dtype == "auto" and device.type == "cpu" and tp == 1
    loaded = load_model(args.model, dtype=dtype, device=device, keep_quantized=keep_quantized)
    family = getattr(loaded.model.config, "family", "decoder")
    if family == "encoder":
        raise ValueError(f"{loaded.name} is an encoder (it embeds, it does not generate): use `hybridlm embed`")
    if family == "seq2seq" and (args.compile or getattr(args, "func", None) is not cmd_generate):
        raise ValueError(f"{loaded.name} is an encoder-decoder: it runs with `hybridlm generate` and without --compile")
    if args.compile and getattr(loaded.model, "vision_config", None) is not None:
        raise ValueError(f"{loaded.name} is a vision-language model: it runs eager (drop --compile)")
    loaded.model.eval()
    if isinstance(getattr(args, "adapter", None), str):  # generate/chat; serve serves adapters beside the base
        _apply_adapter(loaded.model, args.adapter)
    if tp > 1:
        _split(loaded.model, tp, device)
        return loaded
    _set_quant_kernels(loaded.model, args)
    if args.compile:
        _log("hybridlm: compiling the decode step (once per process; inductor caches its kernels on disk)")
        loaded.model = compile_decoder(loaded.model)
        _log(f"hybridlm: compiled in {loaded.model.warm_up():.1f} s")
        return loaded
    start = time.perf_counter()
    choice = choose_linear_impl(loaded.model, args.linear)
    if choice.seconds:  # "auto" measured the float32 matmuls both ways
        _log(f"hybridlm: float32 linears: {choice.impl} ({choice.reason})")
    pack_linears(loaded.model, choice)
    loaded.load_seconds += time.perf_counter() - start
    return loaded


def _split(model, tp: int, device) -> None:
    """Tensor-parallel inference under torchrun: this rank keeps 1/tp of every split layer."""
    import torch.distributed as dist

    from ..parallel.mesh import Layout, build_mesh
    from ..parallel.tensor import check_tensor_parallel, parallelize_for_inference

    check_tensor_parallel(model.config, tp)
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(f"--tp {tp} runs under torchrun: torchrun --nproc-per-node {tp} -m hybridlm generate ...")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != tp:
        raise ValueError(f"--tp {tp} needs exactly {tp} processes, torchrun started {dist.get_world_size()}")
    parallelize_for_inference(model, build_mesh(Layout(tp=tp), device)["tp"])


def _apply_adapter(model, path) -> None:
    """Load a PEFT LoRA adapter onto `model`; merge it where the base is float (then the forward is the
    plain model's, so packed linears and --compile apply), keep it unmerged over quantized layers."""
    from ..finetune.lora import strip_lora
    from ..finetune.peft_format import load_adapter
    from ..nn.lora import lora_modules
    from ..nn.quant import QuantLinear

    lcfg = load_adapter(model, path)
    wrappers = lora_modules(model)
    if not any(isinstance(m.base, QuantLinear) for m in wrappers.values()):
        strip_lora(model)
        how = "merged into the weights"
    else:
        how = "beside the quantized weights"
    _log(f"hybridlm: LoRA adapter {path} (r={lcfg.r}, {', '.join(lcfg.targets)}; {len(wrappers)} layers) {how}")


def _set_quant_kernels(model, args) -> None:
    """Quantized layers: the activation mode asked for, and HYBRIDLM_ISA (auto, avx512_vnni, avx2 or
    portable) to cap the native kernels' instruction set."""
    import os

    from ..nn.quant import set_quant_modes

    if not set_quant_modes(model, act_mode=args.quant_act):
        return
    isa = os.environ.get("HYBRIDLM_ISA")
    if isa:
        from ..kernels import qmatmul

        _log(f"hybridlm: native kernels capped at {isa}: running {qmatmul.set_isa(isa)}")


def _decoding_model(args, model):
    """The model generate and chat decode through: `model`, or the native step over it (--decode-step)."""
    from ..generation.native import NativeDecoder
    from ..kernels import decode_step, qmatmul
    from ..models.decoder import Decoder

    if args.decode_step == "eager" or args.compile:  # _load refused --compile with native
        return model
    if not isinstance(model, Decoder):
        reason = f"{type(model).__name__} is not a decoder-only model"
    else:
        reason = decode_step.unsupported_reason(model) or (None if qmatmul.available() else
                                                          "the native kernels could not be built here")
    if reason is None:
        return NativeDecoder(model)
    if args.decode_step == "native":
        raise ValueError(f"--decode-step native cannot run this model: {reason}")
    return model


def _kv_cache(args, model) -> str:
    """--kv-cache for decoding through `model`, "auto" resolved: float16 K/V where the native step
    runs fast activations (llama.cpp's arithmetic: int8 activations, float16 K/V), else float."""
    from ..generation.native import NativeDecoder

    if args.kv_cache != "auto":
        return args.kv_cache
    return "float16" if isinstance(model, NativeDecoder) and args.quant_act == "fast" else "float"


def _sampling(args, tokenizer):
    from ..generation.sampling import SamplingConfig

    return SamplingConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
        eos_token_ids=tuple(tokenizer.eos_token_ids), ignore_eos=args.ignore_eos)


def _stats_line(stats, load_s: float) -> str:
    return (f"load {load_s:.2f} s | prefill {stats.prompt_tokens} tokens in {stats.prefill_s:.3f} s "
            f"({stats.prefill_tokens_per_s:.0f} tok/s) | decode {stats.new_tokens} tokens at "
            f"{stats.decode_tokens_per_s:.1f} tok/s | cache {stats.cache_bytes / 2**20:.1f} MiB")


class _Streamer:
    """on_token callback printing text as soon as it is complete UTF-8."""

    def __init__(self, tokenizer):
        self.decoder = tokenizer.stream_decoder()
        self.eos = set(tokenizer.eos_token_ids)

    def __call__(self, row: int, token_id: int) -> None:
        if token_id not in self.eos:
            self._write(self.decoder.step(token_id))

    def finish(self) -> None:
        self._write(self.decoder.flush() + "\n")

    @staticmethod
    def _write(text: str) -> None:
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()


# -- subcommands ------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from ..generation.generate import generate

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise ValueError("the prompt is empty")
    if getattr(args, "speculative", None):  # checked before the model loads (and the minute of compiling)
        from ..generation.proposers import check_spec

        check_spec(args.speculative)
        if args.num_speculative_tokens < 1:
            raise ValueError(f"--num-speculative-tokens (k, tokens proposed per round) must be at least 1, "
                             f"not {args.num_speculative_tokens}")
        if args.compile:
            raise ValueError("--speculative runs eager (its verifications are k + 1 tokens at once): drop --compile")
    image_paths = getattr(args, "image", None) or []
    if image_paths:  # bad images and a text-only model are reported before the model loads
        from ..checkpoints.registry import resolve
        from ..multimodal.image import check_visual
        from ..multimodal.prompt import check_prompt_text

        check_prompt_text(prompt, len(image_paths))
        for path in image_paths:
            check_visual(path)
        if resolve(args.model)[2] != "vlm":
            raise ValueError(f"{args.model} is a text-only model: --image needs a vision-language model "
                             f"(a directory written by hybridlm.checkpoints.vlm.save_vlm)")
    loaded = _load(args)
    tok = loaded.tokenizer
    sampling = _sampling(args, tok)
    vision = _vision_config(loaded, image_paths)
    if vision is not None:
        if getattr(args, "speculative", None):
            raise ValueError("--speculative needs a text-only model (not a vision-language model)")
        from ..multimodal.prompt import with_placeholders

        prompt = with_placeholders(prompt, len(image_paths))
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = tok.encode(prompt)
    # stop strings are only known to be text once complete, so with them the text is printed at the end
    streamer = _Streamer(tok) if not args.json and not sampling.stop and getattr(args, "tp", 1) == 1 else None
    model, prompts = loaded.model, [ids]
    if getattr(model.config, "family", "decoder") == "seq2seq":  # the prompt feeds the encoder, once
        model = model.bind_source(ids)
        prompts = model.start_ids
    if vision is not None:
        result = _generate_with_images(args, loaded, ids, image_paths, sampling, streamer)
    elif getattr(args, "speculative", None):
        result = _speculative(args, loaded, model, prompts, sampling, streamer)
    else:
        decoding = _decoding_model(args, model)
        result = generate(decoding, prompts, sampling, cache_kind=args.cache, decode=tok.decode,
                          on_token=streamer, kv_dtype=_kv_cache(args, decoding))
    text = result.texts[0]
    if getattr(args, "tp", 1) > 1:
        import torch.distributed as dist

        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:  # every rank generated the same tokens; rank 0 reports them
            return 0
    if args.json:
        print(json.dumps({"model": loaded.name, "text": text, "prompt_token_ids": ids,
                          "token_ids": result.tokens[0], "finish_reason": result.finish_reasons[0],
                          "load_s": loaded.load_seconds, **result.stats.as_dict()}))
    elif streamer is None:
        print(text)
    else:
        streamer.finish()
    _log(_stats_line(result.stats, loaded.load_seconds))
    if getattr(args, "speculative", None):
        st = result.stats
        _log(f"speculative {args.speculative}, k={args.num_speculative_tokens}: accepted {st.accepted} of "
             f"{st.proposed} proposed ({st.acceptance_rate:.0%}), {st.tokens_per_step:.2f} tokens per target "
             f"forward ({st.steps} verifications)")
    return 0


def _vision_config(loaded, image_paths: list[str]):
    """The model's VisionConfig, or None for a text-only model (which cannot take --image)."""
    vision = getattr(loaded.model, "vision_config", None)
    if vision is None and image_paths:
        raise ValueError(f"{loaded.name} is a text-only model: --image needs a vision-language model "
                         f"(a directory written by hybridlm.checkpoints.vlm.save_vlm)")
    return vision


def _generate_with_images(args, loaded, ids, image_paths, sampling, streamer, images=None):
    """`generate` for a vision-language model: ids hold one placeholder per image."""
    import torch

    from ..multimodal.image import load_visual
    from ..multimodal.prompt import generate_with_images

    cfg = loaded.model.vision_config
    if images is None:
        images = [load_visual(p, cfg) for p in image_paths]
    features = [im for im in images if im.ndim == 2]
    if features and len(features) != len(images):
        raise ValueError("give either images or .safetensors features, not both, in one prompt")
    stacked = torch.stack(images) if images else torch.zeros(0, cfg.channels, cfg.image_size, cfg.image_size)
    if features and len({f.shape[0] for f in features}) != 1:
        raise ValueError("every features file of one prompt needs the same number of patches")
    return generate_with_images(loaded.model, [ids], [stacked], sampling, cache_kind=args.cache,
                                decode=loaded.tokenizer.decode, on_token=streamer, kv_dtype=_kv_cache(args, None))


def _speculative(args, loaded, model, prompts, sampling, streamer):
    """`generate` through speculative decoding (generation/speculative.py), drafting as --speculative says."""
    from ..checkpoints.registry import load_model
    from ..generation.proposers import make_proposer
    from ..generation.speculative import speculative_generate
    from ..nn.packed_linear import pack_linears

    if getattr(model.config, "family", "decoder") == "seq2seq":
        raise ValueError("--speculative needs a decoder-only model")

    def load_draft(name):
        keep_quantized = args.dtype == "auto" and model.device.type == "cpu"  # as the target (see _load)
        draft = load_model(name, dtype=model.dtype, device=model.device, keep_quantized=keep_quantized).model.eval()
        _set_quant_kernels(draft, args)  # the target's activation mode and ISA cap
        pack_linears(draft, args.linear)
        return draft

    proposer = make_proposer(args.speculative, model, load_draft)
    return speculative_generate(model, proposer, prompts, sampling, k=args.num_speculative_tokens,
                                cache_kind=args.cache, decode=loaded.tokenizer.decode, on_token=streamer,
                                kv_dtype=_kv_cache(args, model))


def cmd_chat(args) -> int:
    from ..generation.generate import generate

    loaded = _load(args)
    model = _decoding_model(args, loaded.model)
    tok = loaded.tokenizer
    sampling = _sampling(args, tok)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    vision = getattr(loaded.model, "vision_config", None)
    images, pending = [], []  # every image of the conversation in order; those for the next message
    hint = "; /image PATH attaches an image to your next message" if vision is not None else ""
    _log(f"hybridlm chat with {loaded.name} (loaded in {loaded.load_seconds:.2f} s); /reset clears, /exit quits{hint}")
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages, images, pending = list(system), [], []
            continue
        if line.strip().startswith("/image"):
            _chat_image(line.strip()[len("/image"):].strip(), vision, loaded.name, pending)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": [{"type": "image"}] * len(pending) + [{"type": "text", "text": line}]
                         if vision is not None else line})
        images, pending = images + pending, []
        streamer = _Streamer(tok)
        if vision is not None:
            from ..multimodal.prompt import render_content

            ids = tok.encode(tok.apply_chat_template(render_content(messages), add_generation_prompt=True))
            result = _generate_with_images(args, loaded, ids, [], sampling, streamer, images=images)
        else:
            ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
            result = generate(model, [ids], sampling, cache_kind=args.cache, decode=tok.decode,
                              on_token=streamer, kv_dtype=_kv_cache(args, model))
        streamer.finish()
        messages.append({"role": "assistant", "content": result.texts[0]})
        _log(f"[{result.stats.decode_tokens_per_s:.1f} tok/s]")
    return 0


def _chat_image(path: str, vision, name: str, pending: list) -> None:
    """`/image PATH` in chat: queue the image for the next message; a bad one is reported on stderr
    and the chat goes on."""
    from ..multimodal.image import load_visual

    try:
        if vision is None:
            raise ValueError(f"{name} is a text-only model: /image needs a vision-language model")
        if not path:
            raise ValueError("/image needs a path: /image PATH")
        pending.append(load_visual(path, vision))
    except (ValueError, FileNotFoundError) as e:
        _log(f"hybridlm: error: {e}")
        return
    _log(f"[image {path} attached to your next message]")


def cmd_info(args) -> int:
    from ..analysis.memory import memory_summary
    from ..checkpoints.registry import describe_source, known_models
    from ..presets import PRESETS

    if args.list or not args.model:
        print("registry: " + ", ".join(known_models()))
        print("presets:  " + ", ".join(sorted(PRESETS)))
        return 0
    cfg, source = describe_source(args.model)
    nbytes = {"float32": 4, "bfloat16": 2, "float16": 2}[args.dtype]
    mem = memory_summary(cfg, nbytes, args.kv_cache)
    info = {
        "model": args.model, "source": source, "params": mem.params, "dtype": args.dtype,
        "layer_pattern": cfg.pattern, "blocks": len(cfg.blocks), "attention_layers": cfg.n_attention_layers,
        "d_model": cfg.d_model, "heads": cfg.n_heads, "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len, "weight_bytes": mem.weight_bytes,
        "kv_bytes_per_token": mem.kv_bytes_per_token, "kv_bytes_at_context": mem.kv_bytes_at_context,
        "kv_cache": args.kv_cache,
        "mamba_layers": cfg.n_mamba_layers, "mamba_state_bytes": cfg.mamba_state_bytes(nbytes),
        "config": cfg.to_dict(),
    }
    from ..checkpoints.quantized import is_quantized_dir, quantized_summary

    quant = quantized_summary(source) if is_quantized_dir(source) else None
    if quant:  # a `hybridlm quantize` directory: bytes as stored, read from its safetensors header
        info["quantized"] = quant
    from ..kernels import qmatmul

    info["quant_kernels"] = qmatmul.describe()  # the native low-bit path quantized layers run here
    from ..kernels import triton_support

    info["gpu_kernels"] = triton_support.describe()  # the Triton kernels CUDA forwards take
    if args.json:
        print(json.dumps(info))
        return 0
    mib = 2**20
    print(f"model           {args.model} ({source})")
    print(f"parameters      {mem.params:,} ({mem.params / 1e6:.1f}M)")
    print(f"layer pattern   {cfg.pattern}  ({len(cfg.blocks)} blocks, {cfg.n_attention_layers} attention)")
    print(f"shape           d_model {cfg.d_model}, heads {cfg.n_heads} (kv {cfg.n_kv_heads}) x {cfg.head_dim}, "
          f"ff {cfg.d_ff} {cfg.mlp}, vocab {cfg.vocab_size}, positions {cfg.position}")
    print(f"dtype           {args.dtype}")
    print(f"weights         {mem.weight_bytes / mib:,.1f} MiB")
    print(f"quant kernels   {qmatmul.summary_line(info['quant_kernels'])}")
    print(f"gpu kernels     {info['gpu_kernels']}")
    if quant:
        q_ratio = quant["quantized_bytes"] / max(quant["quantized_float32_bytes"], 1)
        t_ratio = quant["total_bytes"] / max(quant["float32_total_bytes"], 1)
        print(f"quantized       {quant['quantized_linears']} linears ({quant['quantization'].get('method')}, "
              f"{quant['quantization'].get('bits')}-bit, group {quant['quantization'].get('group_size')}): "
              f"{quant['quantized_bytes'] / mib:,.1f} MiB, {quant['quantized_float32_bytes'] / mib:,.1f} MiB in "
              f"float32 (x{q_ratio:.3f} = 1/{1 / q_ratio:.1f})")
        print(f"stored          {quant['total_bytes'] / mib:,.1f} MiB on disk and in memory with the float "
              f"embedding and norms, {quant['float32_total_bytes'] / mib:,.1f} MiB all float32 (x{t_ratio:.3f})")
    print(f"KV cache        {mem.kv_bytes_per_token / 1024:,.1f} KiB per token, "
          f"{mem.kv_bytes_at_context / mib:,.1f} MiB at the full context of {cfg.max_seq_len} tokens (batch 1)")
    if args.kv_cache != "float":  # the saving, against the same cache in --dtype
        base = memory_summary(cfg, nbytes).kv_bytes_per_token
        what = "float16 K/V" if args.kv_cache == "float16" else "int8 K/V with a float32 scale per head and token"
        print(f"                {what}: "
              f"{mem.kv_bytes_per_token / base:.1%} of {args.dtype} ({base / 1024:,.1f} KiB per token)")
    if cfg.n_mamba_layers:
        print(f"Mamba state     {cfg.mamba_state_bytes(nbytes) / mib:,.2f} MiB per sequence at any length "
              f"({cfg.n_mamba_layers} layers of {cfg.mamba_n_heads} heads x {cfg.mamba_head_dim}, "
              f"state {cfg.d_state})")
    return 0


def cmd_convert(args) -> int:
    from ..checkpoints.convert import convert_gguf_to_hf, convert_to_gguf
    from ..device import DTYPES

    start = time.perf_counter()
    if str(args.out_dir).lower().endswith(".gguf"):
        s = convert_to_gguf(args.source, args.out_dir, quant=args.quant, overwrite=args.overwrite)
        types = ", ".join(f"{n} {k}" for k, n in sorted(s.tensor_types.items()))
        copied = f"; {s.copied_blocks} tensors copied from their quantized codes" if s.copied_blocks else ""
        _log(f"wrote {s.path} ({s.quant}: {types}{copied}; {s.bytes / 2**20:,.1f} MiB) in "
             f"{time.perf_counter() - start:.1f} s")
        return 0
    if args.quant is not None:
        raise ValueError("--quant applies to GGUF output (an OUT ending in .gguf)")
    out = convert_gguf_to_hf(args.source, args.out_dir, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    _log(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def register(sub) -> None:
    """Add this module's subcommands to the `hybridlm` parser."""
    p = sub.add_parser("generate", help="continue a prompt; the text goes to stdout, stats to stderr",
                       description="Generate text from a prompt. Only the generated text is written to stdout; "
                                   "load time, prefill and decode speed and cache size go to stderr.")
    _add_model_args(p)
    p.add_argument("prompt", help="the prompt text, or - to read it from stdin")
    _add_sampling_args(p, default_max=128)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template as a user turn")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, timings) instead of text")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel ranks: run under `torchrun --nproc-per-node N -m hybridlm generate ... "
                        "--tp N`; each rank holds 1/N of the attention heads, KV cache, MLP channels and Mamba "
                        "heads (float weights: a GGUF is dequantized; no --compile); rank 0 prints the text")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image (any format Pillow reads; or a .safetensors file holding precomputed "
                        "'features' (P, d_vision)) for a vision-language model; repeatable. The prompt places "
                        "each with an <image> placeholder, in order; a prompt without placeholders gets them in front")
    _add_decode_step_arg(p)
    _add_speculative_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive chat that streams tokens, using the model's chat template",
                       description="Chat with a model. Type a message and press enter; /reset clears the "
                                   "conversation, /exit (or end of input) quits. With a vision-language model, "
                                   "/image PATH attaches an image to your next message.")
    _add_model_args(p)
    _add_sampling_args(p, default_max=512)
    p.add_argument("--system", default=None, help="system message")
    _add_decode_step_arg(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="parameters, layer pattern, weight bytes and KV-cache bytes of a model or preset",
                       description="Describe a model without running it: parameters, layer pattern, dtype, weight "
                                   "bytes, KV-cache bytes per token and at the full context.")
    p.add_argument("model", nargs="?", help="registry name, preset name, .gguf file or HF checkpoint directory")
    p.add_argument("--list", action="store_true", help="list registry names and presets")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the byte counts assume (default float32)")
    p.add_argument("--kv-cache", default="float", choices=["float", "float16", "int8"],
                   help="K/V storage the cache bytes assume: float = --dtype, float16, int8 = int8 + a float32 "
                        "scale per head and token, as `generate --kv-cache` (default float)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="GGUF -> HF-layout directory, or any model -> a llama.cpp GGUF file",
                       description="Convert a GGUF file into an HF checkpoint directory that transformers and "
                                   "hybridlm load (tensors dequantized to --dtype), or, when OUT ends in .gguf, "
                                   "write a model as a llama.cpp GGUF file. Written atomically.",
                       epilog="GGUF output (--quant): f32/f16 store floats; q8_0/q4_0/q4_1 store the block linears "
                              "in that type (token embedding and output Q8_0, norms F32, as llama.cpp's quantizer). "
                              "Float weights are rounded as ggml rounds them; a `hybridlm quantize` directory with "
                              "int8 / int4 group-32 weights (RTN, GPTQ, AWQ) is written as its own codes and scales, "
                              "bit for bit (symmetric int4 = q4_0, asymmetric = q4_1, int8 = q8_0); other group "
                              "sizes or formats are refused. Default: the quantized directory's own type, else f32.")
    p.add_argument("source", help="GGUF output: a registry name, .gguf file, HF directory or `hybridlm quantize` "
                                  "directory; HF output: a .gguf file or a registry name")
    p.add_argument("out_dir", metavar="OUT", help="an output directory (HF; must not exist or be empty unless "
                                                  "--overwrite), or a file ending in .gguf")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="saved dtype (HF output)")
    p.add_argument("--quant", default=None, choices=["f32", "f16", "q8_0", "q4_0", "q4_1"],
                   help="GGUF output: storage type (see below)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_convert)
