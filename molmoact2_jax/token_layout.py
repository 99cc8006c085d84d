"""MolmoAct2's token layout: which id every special token has, and the strings that name them.

On top of a base text vocabulary come, in this order: the robot token families (setup, control, state, action,
depth), `<extra_i>` padding up to a multiple of PAD_MULTIPLE (`vocab_size` = rows of the embedding and LM head),
then the 14 multimodal tokens at `vocab_size + i` (they live in the model's extra embedding table). An image in a
prompt is `<im_start>`, its pooled patch tokens row by row (each row optionally closed by `<im_col>`), `<im_end>`.

This module is the one place both sides read the layout from: the text tokenizer (molmoact2_jax/tokenizers) builds
and checks it, the model config (molmoact2_jax/models) carries its ids. It imports nothing of this project, so
neither side has to import the other (tests/test_package_graph.py holds it to that).
"""
from __future__ import annotations

import dataclasses

# The 14 multimodal tokens, in table order (ids vocab_size + i), and the strings a prompt names them by.
MULTIMODAL_FIELDS = ("image_start", "image_end", "image_patch", "image_col", "low_res_image_start",
                     "image_placeholder", "image_low", "frame_start", "frame_end", "video_placeholder", "points",
                     "token_index", "vit_index", "vit_loc")
MULTIMODAL = ("<im_start>", "<im_end>", "<im_patch>", "<im_col>", "<low_res_im_start>", "<|image|>", "<im_low>",
              "<frame_start>", "<frame_end>", "<|video|>", "<|points|>", "<|token_index|>", "<|vit_index|>",
              "<|vit_loc|>")
PAD_MULTIPLE = 1024          # vocab_size = base vocabulary + robot tokens rounded up to this
NUM_STATE_TOKENS, NUM_ACTION_TOKENS, NUM_DEPTH_TOKENS = 256, 2048, 128


def robot_token_ids(base_vocab: int, pad_multiple: int = PAD_MULTIPLE) -> dict:
    """Ids of the robot token families appended after the base vocabulary (in this order), `vocab_size`, the
    multimodal ids after it, and `num_added_robot_tokens`."""
    ids = {}
    nxt = base_vocab
    for name in ("setup_start", "setup_end", "control_start", "control_end", "state_start", "state_end"):
        ids[name] = nxt
        nxt += 1
    ids["state_token_start"], nxt = nxt, nxt + NUM_STATE_TOKENS
    for name in ("action_output", "action_start", "action_end"):
        ids[name] = nxt
        nxt += 1
    ids["action_token_start"], nxt = nxt, nxt + NUM_ACTION_TOKENS
    for name in ("depth_output", "depth_start", "depth_end"):
        ids[name] = nxt
        nxt += 1
    ids["depth_token_start"], nxt = nxt, nxt + NUM_DEPTH_TOKENS
    embedding_size = -(-nxt // pad_multiple) * pad_multiple
    ids["num_added_robot_tokens"] = nxt - base_vocab
    ids["vocab_size"] = embedding_size
    for i, name in enumerate(MULTIMODAL_FIELDS):
        ids[name] = embedding_size + i
    return ids


@dataclasses.dataclass
class TokenLayout:
    """Every special id the model and the data pipelines use."""
    base_vocab: int
    vocab_size: int
    setup_start: int
    setup_end: int
    control_start: int
    control_end: int
    state_start: int
    state_end: int
    state_token_start: int
    action_output: int
    action_start: int
    action_end: int
    action_token_start: int
    depth_output: int
    depth_start: int
    depth_end: int
    depth_token_start: int
    image_start: int
    image_end: int
    image_patch: int
    image_col: int
    low_res_image_start: int
    image_placeholder: int
    image_low: int
    frame_start: int
    frame_end: int
    video_placeholder: int
    points: int
    token_index: int
    vit_index: int
    vit_loc: int
    eos: int
    num_state_tokens: int = NUM_STATE_TOKENS
    num_action_tokens: int = NUM_ACTION_TOKENS
    num_depth_tokens: int = NUM_DEPTH_TOKENS

    @classmethod
    def compute(cls, base_vocab: int, eos: int, pad_multiple: int = PAD_MULTIPLE) -> "TokenLayout":
        """The layout counted from the base vocabulary size alone (no id stated anywhere)."""
        ids = robot_token_ids(base_vocab, pad_multiple)
        ids.pop("num_added_robot_tokens")
        return cls(base_vocab=base_vocab, eos=eos, **ids)

    @classmethod
    def from_model_tokens(cls, tokens) -> "TokenLayout":
        """The layout a model config carries (`config.model.tokens`, any mapping of field -> id; its EOS is
        `eos_token_id`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in dict(tokens).items() if k in fields}
        d["eos"] = tokens["eos_token_id"]
        return cls(**d)

    def state_token(self, k):
        return self.state_token_start + k

    def action_token(self, k):
        return self.action_token_start + k

    def depth_token(self, k):
        return self.depth_token_start + k

    def special_strings(self) -> dict[str, int]:
        """String -> id for every token this layout adds on top of the base vocabulary."""
        s = {"<setup_start>": self.setup_start, "<setup_end>": self.setup_end,
             "<control_start>": self.control_start, "<control_end>": self.control_end,
             "<state_start>": self.state_start, "<state_end>": self.state_end,
             "<action_output>": self.action_output, "<action_start>": self.action_start,
             "<action_end>": self.action_end, "<depth_output>": self.depth_output,
             "<depth_start>": self.depth_start, "<depth_end>": self.depth_end}
        s.update({f"<state_{k}>": self.state_token(k) for k in range(self.num_state_tokens)})
        s.update({f"<action_{k}>": self.action_token(k) for k in range(self.num_action_tokens)})
        s.update({f"<depth_{k}>": self.depth_token(k) for k in range(self.num_depth_tokens)})
        first_extra = self.depth_token_start + self.num_depth_tokens
        s.update({f"<extra_{i}>": first_extra + i for i in range(max(self.vocab_size - first_extra, 0))})
        s.update({name: getattr(self, field) for name, field in zip(MULTIMODAL, MULTIMODAL_FIELDS)})
        return s

    def image_family(self) -> tuple[int, ...]:
        """Ids whose token_type_ids are 1 (image tokens)."""
        return (self.image_patch, self.image_col, self.image_start, self.low_res_image_start, self.frame_start,
                self.image_end, self.frame_end, self.image_low)


def expand_image_tokens(ids, layout: TokenLayout, image_grids, use_col_tokens: bool = False) -> list[int]:
    """Replaces the k-th `<|image|>` by `<im_start>` + rows*cols `<im_patch>` (+ `<im_col>` after each row when
    `use_col_tokens`) + `<im_end>`; `image_grids`: (rows, cols) of pooled tokens per image."""
    out, k = [], 0
    for i in ids:
        if i != layout.image_placeholder:
            out.append(i)
            continue
        if k >= len(image_grids):
            raise ValueError(f"prompt has more <|image|> placeholders than images ({len(image_grids)})")
        rows, cols = image_grids[k]
        row = [layout.image_patch] * cols + ([layout.image_col] if use_col_tokens else [])
        out += [layout.image_start] + row * rows + [layout.image_end]
        k += 1
    if k != len(image_grids):
        raise ValueError(f"prompt has {k} <|image|> placeholders but {len(image_grids)} images were given")
    return out
