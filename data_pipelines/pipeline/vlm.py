"""Generic vision-language rehearsal data: images + multi-turn text from parquet or JSONL.

Row schema (both formats): `images`: list of encoded images (parquet: binary; JSONL: file paths
relative to the JSONL file), `messages`: list of {"role": "user"|"assistant", "content": str}.
The conversation is rendered in the Qwen3 chat format the robot prompt uses; image placeholders
go in front of the first user turn (same `<|image|>` prefix rule as robot prompts). With a tokenizer,
`loss_mask` is 1 on assistant tokens (content + closing <|im_end|>), 0 elsewhere.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipelines.errors import DataError
from data_pipelines.formats.images import decode_image, encode_image, resize_square
from data_pipelines.pipeline.packing import PackIterDataset
from data_pipelines.pipeline.robot_dataset import _shard_options
from data_pipelines.synthetic import COLORS
from data_pipelines.transforms.prompt import image_prefix
from molmoact2_jax.preprocessing.image import pooled_grid
from molmoact2_jax.token_layout import expand_image_tokens


class VLMSource:
    """Random-access rows from a .parquet or .jsonl file (a Grain RandomAccessDataSource)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".parquet":
            t = pq.read_table(self.path)
            for col in ("images", "messages"):
                if col not in t.column_names:
                    raise DataError(f"column missing; have {t.column_names}", path=self.path, key=col)
            self._rows = t.to_pylist()
        elif self.path.suffix in (".jsonl", ".json"):
            self._rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        else:
            raise DataError("VLM source must be .parquet or .jsonl", path=self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict:
        row = dict(self._rows[i])
        imgs = []
        for j, im in enumerate(row.get("images") or []):
            if isinstance(im, str):  # JSONL: a path relative to the file
                p = self.path.parent / im
                if not p.exists():
                    raise DataError("image file missing", path=p, episode=i, key=f"images[{j}]")
                im = p.read_bytes()
            imgs.append(im)
        row["images"] = imgs
        row["row"] = i
        return row

    def __repr__(self) -> str:  # Grain checkpoints compare source reprs
        return f"VLMSource({self.path})"


def render_conversation(messages: list[dict], num_images: int) -> list[tuple[str, bool]]:
    """-> [(text, is_answer)] pieces whose concatenation is the full chat text."""
    pieces, first_user = [], True
    for m in messages:
        role, content = m.get("role"), str(m.get("content", ""))
        if role == "user":
            prefix = image_prefix(num_images) if first_user else ""
            first_user = False
            pieces.append((prefix + "<|im_start|>user\n" + content + "<|im_end|>\n<|im_start|>assistant\n", False))
        elif role == "assistant":
            pieces.append((content + "<|im_end|>", True))
            pieces.append(("\n", False))
        else:
            raise ValueError(f"message role must be user or assistant, got {role!r}")
    return pieces


@dataclasses.dataclass(frozen=True)
class VLMTransformConfig:
    image_size: int = 378
    max_images: int = 3
    seq_len: int | None = None    # pad/check token length when a tokenizer is set
    patch_size: int = 14          # the model's ViT patch and connector pooling (image token grid)
    pool_size: int = 2


class VLMTransform:
    def __init__(self, cfg: VLMTransformConfig, tokenizer=None):
        self.cfg, self.tok = cfg, tokenizer

    def __call__(self, row: dict) -> dict:
        cfg = self.cfg
        raw = row["images"]
        if len(raw) > cfg.max_images:
            raise DataError(f"{len(raw)} images > max_images {cfg.max_images}", episode=row.get("row"), key="images")
        images = np.zeros((cfg.max_images, cfg.image_size, cfg.image_size, 3), np.uint8)
        for j, b in enumerate(raw):
            images[j] = resize_square(decode_image(b, episode=row.get("row"), key=f"images[{j}]"), cfg.image_size)
        pieces = render_conversation(row["messages"], len(raw))
        ex = {"images": images, "image_mask": np.arange(cfg.max_images) < len(raw),
              "text": "".join(p for p, _ in pieces), "row": np.int32(row.get("row", -1))}
        if self.tok is not None:
            ids, loss = [], []
            for text, is_answer in pieces:
                piece = self.tok.encode(text)
                ids += piece
                loss += [int(is_answer)] * len(piece)
            ids, loss = [self.tok.layout.eos] + ids, [0] + loss  # BOS = EOS id
            grid = pooled_grid(cfg.image_size, cfg.patch_size, cfg.pool_size)
            expanded, exp_loss = [], []
            for i, l in zip(ids, loss):  # expand image placeholders, keeping loss alignment
                block = expand_image_tokens([i], self.tok.layout, [grid]) if i == self.tok.layout.image_placeholder \
                    else [i]
                expanded += block
                exp_loss += [l] * len(block)
            ids, loss = np.asarray(expanded, np.int32), np.asarray(exp_loss, np.float32)
            if cfg.seq_len is not None:
                if len(ids) > cfg.seq_len:
                    raise DataError(f"{len(ids)} tokens exceed seq_len {cfg.seq_len}", episode=row.get("row"))
                pad = cfg.seq_len - len(ids)
                ex["token_mask"] = np.arange(cfg.seq_len) < len(ids)
                ids, loss = np.pad(ids, (0, pad)), np.pad(loss, (0, pad))
            ex["input_ids"], ex["loss_mask"] = ids, loss
        return ex


@dataclasses.dataclass
class VLMConfig:
    paths: list[str]
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    shard_index: int | None = None
    shard_count: int | None = None
    transform: VLMTransformConfig = dataclasses.field(default_factory=VLMTransformConfig)
    tokenizer: object | None = None
    drop_remainder: bool = True
    pack: object | None = None


def build_vlm_dataset(cfg: VLMConfig) -> grain.IterDataset:
    parts = [grain.MapDataset.source(VLMSource(p)) for p in cfg.paths]
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    idx, count = _shard_options(cfg)
    ds = ds[idx::count].map(VLMTransform(cfg.transform, cfg.tokenizer))
    it = ds.to_iter_dataset()
    if cfg.pack is not None:
        it = PackIterDataset(it, cfg.pack)
    return it.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)


def write_vlm_fixture(path: str | Path, n: int = 8, seed: int = 0) -> Path:
    """Synthetic VQA rows (a coloured block; 'what colour?' / 'where?'), as .parquet or .jsonl."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        color = list(COLORS)[i % len(COLORS)]
        img = np.full((32, 48, 3), 90, np.uint8)
        x = int(rng.integers(0, 40))
        img[10:20, x:x + 8] = COLORS[color]
        side = "left" if x < 20 else "right"
        msgs = [{"role": "user", "content": "What colour is the block?"}, {"role": "assistant", "content": color},
                {"role": "user", "content": "Which side is it on?"}, {"role": "assistant", "content": side}]
        rows.append((encode_image(img, "png"), msgs))
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"images": [[r[0]] for r in rows], "messages": [r[1] for r in rows]}), path)
    else:
        lines = []
        for i, (png, msgs) in enumerate(rows):
            (path.parent / f"img_{i:04d}.png").write_bytes(png)
            lines.append(json.dumps({"images": [f"img_{i:04d}.png"], "messages": msgs}))
        path.write_text("\n".join(lines) + "\n")
    return path
