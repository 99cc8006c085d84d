"""Text tokenizer with MolmoAct2's token layout (molmoact2_jax/token_layout.py says which ids it adds).

The base tokenizer (a Hugging Face `tokenizer.json`, e.g. Qwen3's, or a sentencepiece model) encodes plain text;
the layout's special strings are encoded as whole tokens on top of it. Ids a checkpoint states in its `config.json`
win over computed ones, and ids the base tokenizer already assigns to these strings (the released tokenizer files
carry them) are checked against the layout.
"""
from __future__ import annotations

import dataclasses
import re

import sentencepiece as spm
from tokenizers import Tokenizer

from molmoact2_jax import storage
from molmoact2_jax.token_layout import (MULTIMODAL, MULTIMODAL_FIELDS, TokenLayout, expand_image_tokens,
                                       robot_token_ids)

# config.json key -> layout field, for the ids a checkpoint may state (they differ between releases: read them,
# don't assume).
HF_ID_KEYS = {
    "image_start_token_id": "image_start", "image_end_token_id": "image_end", "image_patch_id": "image_patch",
    "image_col_id": "image_col", "low_res_image_start_token_id": "low_res_image_start",
    "frame_start_token_id": "frame_start", "frame_end_token_id": "frame_end",
    "setup_start_token_id": "setup_start", "setup_end_token_id": "setup_end",
    "control_start_token_id": "control_start", "control_end_token_id": "control_end",
    "state_start_token_id": "state_start", "state_end_token_id": "state_end",
    "state_token_start_id": "state_token_start", "action_output_token_id": "action_output",
    "action_start_token_id": "action_start", "action_end_token_id": "action_end",
    "action_token_start_id": "action_token_start", "depth_output_token_id": "depth_output",
    "depth_start_token_id": "depth_start", "depth_end_token_id": "depth_end",
    "depth_token_start_id": "depth_token_start", "eos_token_id": "eos",
}


def hf_token_ids(hf_config: dict) -> dict[str, int]:
    """TokenLayout field -> id for every id a config.json states (top level or text_config; lists take the
    first entry), plus the num_{state,action,depth}_tokens counts."""
    text = hf_config.get("text_config", {})
    out = {}
    for key, field in HF_ID_KEYS.items():
        value = hf_config.get(key, text.get(key))
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            out[field] = int(value)
    for n in ("state", "action", "depth"):
        if hf_config.get(f"num_{n}_tokens") is not None:
            out[f"num_{n}_tokens"] = int(hf_config[f"num_{n}_tokens"])
    return out


def with_stated_ids(layout: TokenLayout, hf_config: dict) -> TokenLayout:
    """`layout` with the ids a checkpoint's config.json states (top level or text_config) in place of computed ones."""
    text = hf_config.get("text_config", {})
    updates = hf_token_ids(hf_config)
    if "vocab_size" in text:
        updates["vocab_size"] = int(text["vocab_size"])
    return dataclasses.replace(layout, **updates)


# Token strings a tokenizer may carry -> the layout field whose id they are (family starts stand for the family).
NAMED_FIELDS = {
    "<setup_start>": "setup_start", "<setup_end>": "setup_end", "<control_start>": "control_start",
    "<control_end>": "control_end", "<state_start>": "state_start", "<state_end>": "state_end",
    "<state_0>": "state_token_start", "<action_output>": "action_output", "<action_start>": "action_start",
    "<action_end>": "action_end", "<action_0>": "action_token_start", "<depth_output>": "depth_output",
    "<depth_start>": "depth_start", "<depth_end>": "depth_end", "<depth_0>": "depth_token_start",
    **dict(zip(MULTIMODAL, MULTIMODAL_FIELDS)),
}
_ROBOT_OFFSETS = {k: v for k, v in robot_token_ids(0).items() if k not in ("num_added_robot_tokens", "vocab_size")}


def _hf_key_of(field: str) -> str:
    return next((k for k, f in HF_ID_KEYS.items() if f == field), field)


def resolve_layout(hf_config: dict | None = None, backend=None, config_source: str = "config.json",
                   tokenizer_source: str = "tokenizer.json", eos_token: str = "<|im_end|>") -> "TokenLayout":
    """The whole token layout of a checkpoint folder, the way the official code reads it: ids stated in
    config.json win, the rest come from the tokenizer's own tokens by name (`backend`: a `tokenizers.Tokenizer`),
    and the layout rule fills only what neither states, counted from the first robot id either of them gives (else from
    the base vocabulary). Where both state an id they must agree; a disagreement names both files and the key."""
    stated = hf_token_ids(hf_config or {})
    text = (hf_config or {}).get("text_config", {})
    named = {}
    if backend is not None:
        for string, field in NAMED_FIELDS.items():
            i = backend.token_to_id(string)
            if i is not None:
                named[field] = int(i)
        if backend.token_to_id(eos_token) is not None:
            named["eos"] = int(backend.token_to_id(eos_token))
    for field in sorted(set(stated) & set(named)):
        if stated[field] != named[field]:
            string = next((k for k, f in NAMED_FIELDS.items() if f == field), eos_token)
            raise ValueError(f"{config_source} states {_hf_key_of(field)}={stated[field]} but {tokenizer_source} "
                             f"has {string} = {named[field]}: the folder's config and tokenizer disagree")
    known = {**named, **stated}
    anchor = next((f for f in _ROBOT_OFFSETS if f in known), None)
    if anchor is not None:
        base = known[anchor] - _ROBOT_OFFSETS[anchor]
    elif backend is not None:
        base = backend.get_vocab_size(with_added_tokens=True)
    else:
        raise ValueError(f"{config_source}: no robot token id and no tokenizer to count the base vocabulary from")
    if "eos" not in known:
        raise ValueError(f"{tokenizer_source}: no {eos_token!r} token to use as EOS/BOS, and {config_source} "
                         f"states no eos_token_id")
    counts = {k: known.pop(k) for k in ("num_state_tokens", "num_action_tokens", "num_depth_tokens") if k in known}
    layout = dataclasses.replace(TokenLayout.compute(base, known["eos"]), **counts)
    if "vocab_size" in text:
        layout = dataclasses.replace(layout, vocab_size=int(text["vocab_size"]))
    multimodal = {f: layout.vocab_size + i for i, f in enumerate(MULTIMODAL_FIELDS)}  # ids vocab_size + i
    return dataclasses.replace(layout, **{**multimodal, **known})


def no_tokenizer_message(setting: str = "config.data.tokenizer") -> str:
    """What to say when no text tokenizer is given (kept here so the trainer and the data pipelines say the same)."""
    return (f"{setting} is empty: no text tokenizer given; set {setting}=PATH to the base model's tokenizer.json "
            f"(or a folder holding one), or, for a model trained from scratch, make one from the converted shards "
            f"with: molmoact2-data tokenizer SHARD_DIR (writes SHARD_DIR/tokenizer.json)")


class TextTokenizer:
    """Encodes text containing the layout's special strings; everything else goes to the base tokenizer."""

    def __init__(self, backend, layout: TokenLayout, kind: str):
        self.backend, self.layout, self.kind = backend, layout, kind
        self.specials = layout.special_strings()
        self.id_to_special = {v: k for k, v in self.specials.items()}
        names = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

    @classmethod
    def from_file(cls, path: str, hf_config: dict | None = None, eos_token: str = "<|im_end|>",
                  setting: str | None = None) -> "TextTokenizer":
        """`path`: a tokenizer.json, a folder containing one, or a sentencepiece `.model` file, local or `gs://`
        (read from a temporary local copy). `hf_config`: a checkpoint's parsed config.json whose ids override the
        computed layout. `setting`: the config field or flag `path` came from, named when it is empty or missing
        (an empty path names config.data.tokenizer, the one setting that is empty by default)."""
        if path is None or not str(path).strip():
            # an empty path would resolve to the working directory and report "<cwd>/tokenizer.json" not found
            raise FileNotFoundError(no_tokenizer_message(setting or "config.data.tokenizer"))
        p = storage.as_path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.exists():
            where = f" (from {setting})" if setting else ""
            raise FileNotFoundError(f"tokenizer file not found: {p}{where}")
        with storage.LocalCopy(p) as local:
            return cls._from_local_file(local, str(p), hf_config, eos_token)

    @classmethod
    def _from_local_file(cls, local: str, path: str, hf_config, eos_token: str) -> "TextTokenizer":
        """Reads the local file `local`; messages name `path` (where it came from)."""
        if path.endswith(".model"):
            backend = spm.SentencePieceProcessor(model_file=local)
            kind = "sentencepiece"
            eos = backend.piece_to_id(eos_token) if backend.piece_to_id(eos_token) != backend.unk_id() \
                else backend.eos_id()
            layout = TokenLayout.compute(backend.get_piece_size(), eos)
            if hf_config is not None:
                layout = with_stated_ids(layout, hf_config)
        else:
            try:
                backend = Tokenizer.from_file(local)
            except Exception as e:  # noqa: BLE001 - the library raises bare Exceptions on bad JSON
                raise ValueError(f"{path}: not a valid Hugging Face tokenizer.json ({e})") from None
            kind = "hf"
            layout = resolve_layout(hf_config, backend, "config.json", path, eos_token)
        tok = cls(backend, layout, kind)
        tok._check_backend_agrees(path)
        return tok

    def save(self, directory) -> tuple[str, dict]:
        """Writes the base tokenizer into `directory` (tokenizer.json, or tokenizer.model for sentencepiece) and
        returns (file name, the token layout as a dict): `load_saved` rebuilds exactly this tokenizer from the two,
        whatever config.json overrides made the layout."""
        directory = storage.as_path(directory)
        if self.kind == "hf":
            name = "tokenizer.json"
            (directory / name).write_text(self.backend.to_str())
        else:
            name = "tokenizer.model"
            (directory / name).write_bytes(self.backend.serialized_model_proto())
        return name, dataclasses.asdict(self.layout)

    @classmethod
    def load_saved(cls, path, layout: dict) -> "TextTokenizer":
        """The tokenizer `save` wrote: its file and its layout dict."""
        p = storage.as_path(path)
        if not p.exists():
            raise FileNotFoundError(f"tokenizer file not found: {p}")
        with storage.LocalCopy(p) as local:
            if str(p).endswith(".model"):
                backend, kind = spm.SentencePieceProcessor(model_file=local), "sentencepiece"
            else:
                backend, kind = Tokenizer.from_file(local), "hf"
        fields = {f.name for f in dataclasses.fields(TokenLayout)}
        tok = cls(backend, TokenLayout(**{k: v for k, v in layout.items() if k in fields}), kind)
        tok._check_backend_agrees(str(p))
        return tok

    def _check_backend_agrees(self, path):
        if self.kind != "hf":
            return
        for name in ("<setup_start>", "<action_start>", "<action_0>", "<depth_end>", "<im_patch>"):
            known = self.backend.token_to_id(name)
            if known is not None and known != self.specials[name]:
                raise ValueError(f"{path}: {name} has id {known} in the tokenizer but {self.specials[name]} in "
                                 f"the model's token layout (check the checkpoint's config.json)")

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if self.kind == "hf":
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self._split.split(text):
            if piece in self.specials:
                ids.append(self.specials[piece])
            else:
                ids.extend(self._encode_plain(piece))
        return ids

    def _decode_plain(self, ids) -> str:
        if self.kind == "hf":
            return self.backend.decode(ids, skip_special_tokens=False)
        return self.backend.decode(ids)

    def decode(self, ids) -> str:
        out, run = [], []
        for i in ids:
            i = int(i)
            if i in self.id_to_special:
                if run:
                    out.append(self._decode_plain(run))
                    run = []
                out.append(self.id_to_special[i])
            else:
                run.append(i)
        if run:
            out.append(self._decode_plain(run))
        return "".join(out)

    def encode_prompt(self, text: str, image_grids=(), use_col_tokens: bool = False) -> list[int]:
        """Prompt string -> ids with BOS (= EOS id) and each `<|image|>` expanded to its token block.
        `image_grids`: (rows, cols) of pooled tokens per image, e.g. (14, 14) at 378 px."""
        ids = self.encode(text)
        if not ids or ids[0] != self.layout.eos:
            ids = [self.layout.eos] + ids
        return expand_image_tokens(ids, self.layout, image_grids, use_col_tokens)
