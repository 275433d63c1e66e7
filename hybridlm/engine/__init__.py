"""The serving engine: paged KV cache, continuous batching, prefix caching (with Mamba state
snapshots for hybrids), per-request sampling and detokenization.

    from hybridlm.engine import Engine, EngineConfig, RequestParams, StepOutput, QueueFullError

    engine = Engine(model, tokenizer, EngineConfig(kv_memory=512 << 20, max_num_seqs=32))
    print(engine.capacity(1024).describe())           # tokens and sequences of 1024 tokens that fit
    rid = engine.add_request(prompt_ids, RequestParams(max_tokens=64, temperature=0),
                             snapshot_at=(len(system_ids),))   # hybrids: keep the Mamba state there
    while engine.has_unfinished():
        for out in engine.step():                     # StepOutput per request touched this step:
            print(out.request_id, out.text_delta)     # new_token_ids, text_delta, logprobs, finished,
                                                      # finish_reason, prompt/cached/completion tokens
    engine.abort(rid)                                 # frees its blocks at once; idempotent
    engine.metrics()                                  # dict: running, waiting, KV blocks, prefix-cache
                                                      # and snapshot hits/misses, preemptions, totals
    outs = engine.generate(prompts, params)           # offline: run to completion, list[RequestOutput]
    engine.reset_prefix_cache()                       # forget cached prefixes not in use (benchmarks)

`model` is any hybridlm Decoder in eval mode (dense, hybrid, MoE, packed or quantized linears;
not ALiBi); `tokenizer` (optional) gives text deltas and stop strings. The engine is
single-threaded: call it from one thread. Errors: add_request raises ValueError (a request that
can never run), TypeError, QueueFullError; a failing forward ends that step's requests with
finish_reason "error" and the engine keeps serving.
Files: config.py (EngineConfig), request.py (RequestParams, StepOutput, Request), block_pool.py,
snapshots.py and scheduler.py (pure Python bookkeeping), paged_cache.py and paged_attention.py
(tensors), sampler.py, detokenizer.py, capacity.py, engine.py (the step loop).
"""

from .capacity import Capacity
from .config import ConfigError, EngineConfig
from .engine import Engine
from .request import QueueFullError, RequestOutput, RequestParams, StepOutput, TokenLogprob

__all__ = ["Capacity", "ConfigError", "Engine", "EngineConfig", "QueueFullError", "RequestOutput", "RequestParams",
           "StepOutput", "TokenLogprob"]
