"""One `Tokenizer` over the `tokenizers` library: HF `tokenizer.json` files, GGUF metadata, chat
templates, and incremental detokenization for streaming.

BOS is ours to add: encoding never runs the backend's post-processor, and `encode` prepends BOS when
the tokenizer's files say so (`add_bos_token`, or a post-processor that adds it).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend


class TokenizerError(ValueError):
    """A tokenizer description hybridlm cannot build, or a request it cannot serve."""


# Special tokens that end a turn in the chat templates of common model families. One that the
# template writes is a stop token beside eos (SmolLM2's eos already is <|im_end|>; Llama 3's is not).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
               "<|end_of_text|>", "</s>")

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> how HF splits text before BPE.
_GPT2_BYTES = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex inside
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _pre_tokenizer(name: str | None) -> pre_tokenizers.PreTokenizer:
    # llama.cpp splits "\p{N}" first, then applies GPT-2's regex: HF's Digits(individual) + ByteLevel,
    # which is what SmolLM2's own tokenizer.json says
    if name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _GPT2_BYTES])
    if name in (None, "default", "gpt-2", "gpt2", "mpt", "olmo", "jais"):
        return _GPT2_BYTES
    if name in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"):
        return _split_then_bytes(_LLAMA3_SPLIT)
    if name in ("qwen2", "deepseek-r1-qwen"):
        return _split_then_bytes(_QWEN2_SPLIT)
    raise TokenizerError(f"GGUF pre-tokenizer {name!r} is not supported")


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet byte-level BPE vocabularies are spelled in."""
    kept = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in kept}
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - len(kept))
    return chars


def _token_text(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


class Tokenizer:
    """Text <-> token ids, chat templates, streaming detokenization. Wraps a `tokenizers.Tokenizer`."""

    def __init__(self, backend: Backend, *, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, add_bos: bool = False,
                 chat_template: str | None = None):
        self.backend = backend
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None
        # eos, then the end-of-turn special tokens the chat template writes: generation stops at any
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        turn_ends = [t for t in END_OF_TURN if t in specials and chat_template and t in chat_template]
        ids = [self.token_to_id(t) for t in [eos_token, *turn_ends]]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in ids if i is not None))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        """From an HF directory (tokenizer.json, tokenizer_config.json, chat_template.jinja) or a tokenizer.json."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"no tokenizer.json at {path}")
        backend = Backend.from_file(str(file))
        # older directories keep the special tokens in special_tokens_map.json; newer ones the
        # template in chat_template.jinja
        config = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (file.parent / name).is_file():
                config |= {k: v for k, v in json.loads((file.parent / name).read_text(encoding="utf-8")).items()
                           if v is not None}
        jinja_file = file.parent / "chat_template.jinja"
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one is the chat template
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        tokens = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # not stated: does the file's post-processor put BOS first?
            bos_id = backend.token_to_id(tokens["bos_token"]) if tokens["bos_token"] else None
            add_bos = bos_id is not None and backend.encode("", add_special_tokens=True).ids[:1] == [bos_id]
        return cls(backend, add_bos=bool(add_bos), chat_template=template, **tokens)

    @classmethod
    def from_gguf_fields(cls, meta: Mapping[str, Any]) -> "Tokenizer":
        """A byte-level BPE from GGUF metadata (the `tokenizer.*` keys, values already decoded)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind is None or not meta.get("tokenizer.ggml.tokens"):
            raise TokenizerError("the GGUF file describes no tokenizer (no tokenizer.ggml.model or tokens)")
        if kind != "gpt2":
            raise TokenizerError(f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2', byte-level BPE)")
        tokens, merges = list(meta["tokenizer.ggml.tokens"]), meta.get("tokenizer.ggml.merges")
        if not merges:
            raise TokenizerError("the GGUF byte-level tokenizer has no merges")
        alphabet = byte_alphabet()
        spelled = set(alphabet.values())
        # a token not written in the byte alphabet is spelled from its UTF-8 bytes (as transformers does)
        vocab = {t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode()): i for i, t in enumerate(tokens)}
        backend = Backend(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type") or []
        # CONTROL (3) tokens are special; USER_DEFINED (4) ones are matched whole but are text.
        # A "control" token outside the byte alphabet is a llama.cpp mislabel and is skipped.
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, k in zip(tokens, types) if k == 3 and set(t) <= spelled])
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])

        def token(key: str) -> str | None:
            i = meta.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        bos, add_bos = token("bos_token_id"), bool(meta.get("tokenizer.ggml.add_bos_token", False))
        if add_bos and bos is not None:
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
        else:
            backend.post_processor = processors.ByteLevel(trim_offsets=False)
        return cls(backend, bos_token=bos, eos_token=token("eos_token_id"), pad_token=token("padding_token_id"),
                   unk_token=token("unknown_token_id"), add_bos=add_bos and bos is not None,
                   chat_template=meta.get("tokenizer.chat_template"))

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                  special_tokens: Iterable[str] = ("<|endoftext|>",), length: int | None = None,
                  show_progress: bool = False) -> "Tokenizer":
        """Train a byte-level BPE (GPT-2's pre-tokenizer and 256-byte alphabet, so any text encodes) on
        `texts`. `vocab_size` counts the bytes, the merges and `special_tokens`, whose first is eos.
        `length` is the number of texts, for the progress bar only."""
        specials = list(special_tokens)
        if vocab_size < 256 + len(specials):
            raise TokenizerError(f"vocab_size {vocab_size} is below the 256 byte tokens plus "
                                 f"{len(specials)} special tokens")
        backend = Backend(models.BPE(fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _GPT2_BYTES
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
        backend.train_from_iterator(texts, trainer, length=length)
        return cls(backend, eos_token=specials[0] if specials else None)

    # -- ids -----------------------------------------------------------------------------------
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- text <-> ids --------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """text -> ids. Special tokens written in the text (e.g. <|im_start|>) become their ids."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        bos = self.bos_token_id
        if (self.add_bos if add_bos is None else add_bos) and bos is not None:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        """A fresh incremental detokenizer: feed it ids one at a time with `.step(id)`."""
        return StreamDecoder(self, skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the model's Jinja chat template."""
        if self._template is None:
            raise TokenizerError("this tokenizer has no chat template")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                     pad_token=self.pad_token or "", unk_token=self.unk_token or "", **kwargs)

    # -- files ---------------------------------------------------------------------------------
    def to_hf_files(self, out_dir: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json that transformers' AutoTokenizer loads."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.bos_token,
                  "eos_token": self.eos_token, "pad_token": self.pad_token, "unk_token": self.unk_token,
                  "add_bos_token": self.add_bos, "add_eos_token": False, "clean_up_tokenization_spaces": False}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")


class StreamDecoder:
    """Token ids in, text out as soon as it is complete (the incremental scheme of vLLM's detokenizer).

    Each step decodes a short window of ids twice, with and without the new one, and emits the
    difference. The window starts one emitted chunk back so decoders that treat the first token
    specially (a SentencePiece leading space) see the same start both times. Text ending in U+FFFD
    is an unfinished UTF-8 character split across tokens: it is held until the next ids complete it.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer, self._skip = tokenizer, skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start: the first id of the last emitted chunk
        self._read = 0  # ids before this have been emitted

    def _advance(self, force: bool) -> str:
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=self._skip)
        after = decode(self._ids[self._prefix:], skip_special_tokens=self._skip)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not force):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text (often '' while a character is unfinished)."""
        self._ids.append(int(token_id))
        return self._advance(force=False)

    def flush(self) -> str:
        """The text still held back at the end of a stream (an unfinished character as U+FFFD)."""
        return self._advance(force=True)


def _compile_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox, with the helpers HF chat templates expect."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def raise_exception(message: str):
        raise TokenizerError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
