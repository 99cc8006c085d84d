"""The stages both demos share (finetune:demo and finetune:demo_think): MetaWorld recording, conversion,
tokenizers, the training config and the served checkpoint."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.convert import ConvertOptions, convert
from data_pipelines.formats.lerobot_reader import LeRobotDataset
from data_pipelines.norm_stats import NormStats
from data_pipelines.stats import write_norm_stats
from data_pipelines.transforms.normalize import normalize
from molmoact2_jax.evaluation.config import DRAWING_FIELDS, SIM_SETTINGS_FILE, parse_suite, sim_settings
from molmoact2_jax.evaluation.recorder import RecordOptions, record
from molmoact2_jax.tokenizers.openfast import OpenFAST

# Recording limit per expert episode (the policy's closed-loop limit is config.demo.max_steps). The DART push episodes that
# succeed take 73-197 steps; the failed ones (12 of 40) run to the limit, so it is recording time.
EXPERT_STEPS = 220


def stage(n: int, title: str, total: int = 8):
    print(f"\n[{n}/{total}] {title}", flush=True)
    return time.perf_counter()


def done(t0: float, what: str = ""):
    print(f"      done in {time.perf_counter() - t0:.1f}s {what}", flush=True)


def _recorded_as(path: Path, cfg, episodes: int | dict, seed: int, tasks, storage: str, depth: bool = False,
                 action_noise: float = 0.0) -> bool:
    """An existing recording made with these settings (else it is recorded again)."""
    meta = path / "meta" / "sim_recording.json"
    if not meta.exists():
        return False
    s = json.loads(meta.read_text())
    drawn = sim_settings(cfg)
    return (s.get("cameras") == list(cfg.camera_names) and s.get("image_hw") == list(cfg.image_hw)
            and s.get("seed") == seed and all(s.get(k) == drawn[k] for k in DRAWING_FIELDS)
            and s.get("image_storage") == storage and s.get("suite") == "metaworld:" + ",".join(tasks)
            and bool(s.get("depth")) == depth and float(s.get("action_noise", 0.0)) == float(action_noise)
            and {t: v.get("episodes") for t, v in s.get("tasks", {}).items()}
            == {t: RecordOptions(episodes=episodes).episodes_of(t) for t in tasks})


def record_data(wd: Path, cfg, tasks, train_eps: int | dict, heldout_eps: int, workers: int, storage: str = "image",
                depth: bool = False, action_noise: float = 0.0):
    """Training episodes with `action_noise` (DART, evaluation/recorder.py); held-out ones always without, so the
    held-out error is measured on the expert's own path."""
    suite = parse_suite("metaworld:" + ",".join(tasks))
    out = {}
    for name, eps, seed in (("train", train_eps, 0), ("heldout", heldout_eps, 500)):
        path = wd / "lerobot" / name
        noise = action_noise if name == "train" else 0.0
        if not _recorded_as(path, cfg, eps, seed, tasks, storage, depth, noise):
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(wd / "shards" / name, ignore_errors=True)
            # Lossless frames: the goal marker is 1-2 pixels at 112 px, and LeRobot's mp4 (crf 30, yuv420p)
            # erases it, so a policy trained on the videos never sees the goal it is evaluated on.
            s = record(suite, cfg, RecordOptions(episodes=eps, seed=seed, workers=workers, codec="h264", max_steps=EXPERT_STEPS,
                                                 image_storage=storage, only_success=True, depth=depth,
                                                 action_noise=noise), path)
            rates = {t: f"{v['successes']}/{v['episodes']}" for t, v in s.get("tasks", {}).items()}
            print(f"      {name}: expert successes {rates}, {s['frames']} frames")
        out[name] = path
    return out


def convert_data(wd: Path, datasets: dict, horizon: int, image: int, workers: int, depth_codes: dict | None = None,
                 image_format: str = "png"):
    shards = {}
    for name, src in datasets.items():
        shards[name] = wd / "shards" / name
        shutil.rmtree(shards[name], ignore_errors=True)
        convert(ConvertOptions(source=f"lerobot:{src}", embodiment="metaworld", out=str(shards[name]),
                               horizon=horizon, image_size=image, workers=workers, image_format=image_format,
                               depth_codes=str(depth_codes[name]) if depth_codes else None))
    stats_path = wd / "norm_stats.json"
    write_norm_stats([str(shards["train"])], stats_path)
    return shards, stats_path


def fit_tokenizers(wd: Path, train_src: Path, stats_path: Path, tag: str, horizon: int):

    ds = LeRobotDataset(train_src)
    info = NormStats.load(stats_path).tag(tag)
    corpus = [info.setup_type, info.control_mode, "The task is to . The setup is . The current "
              "state of the robot is . The expected control mode is . Given these, what action should the robot "
              "take to complete the task?", "user", "assistant", "Image"]
    chunks = []
    for ep in range(len(ds.episodes)):
        corpus.append(ds.task(ep))
        acts = ds.episode_columns(ep, keys=("action",))["action"]
        norm = normalize(acts, info.action_stats, info.norm_mode)
        for t in range(0, len(norm) - horizon + 1, 2):
            chunks.append(norm[t:t + horizon])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (wd / "tokenizer").mkdir(exist_ok=True)
    tok.save(str(wd / "tokenizer" / "tokenizer.json"))
    fast = OpenFAST.fit(chunks, vocab_size=1024, scale=10)
    fast.save(wd / "openfast")
    enc = fast.encode(np.stack(chunks[:200]))
    print(f"      text vocab {tok.get_vocab_size()}, OpenFAST: {len(chunks)} chunks, "
          f"{np.mean([len(e) for e in enc]):.1f} tokens per {horizon}x{chunks[0].shape[1]} chunk")
    return wd / "tokenizer" / "tokenizer.json", wd / "openfast"


def train_config(cfg, shards: dict, stats_path: Path, tokenizer: Path, openfast: Path):
    """The demo's resolved config (settings.resolve) with the data it made: its shards, norm stats and
    tokenizers; the held-out shards are the trainer's eval source."""
    c = cfg.copy_and_resolve_references()
    c.data.sources = [{"path": str(shards["train"]), "weight": 1.0}]
    c.data.eval_sources = [{"path": str(shards["heldout"]), "weight": 1.0}]
    c.data.norm_stats, c.data.tokenizer, c.data.openfast = str(stats_path), str(tokenizer), str(openfast)
    return c


def save_checkpoint(wd: Path, params, cfg, sim_cfg, stats_path: Path, tokenizer: Path, openfast: Path) -> Path:
    from molmoact2_jax.checkpoint_io import params as params_io  # lazy: imports jax
    ckpt = wd / "final_checkpoint"
    params_io.save_params(str(ckpt), params, cfg.model)
    assets = ckpt / "assets"
    assets.mkdir(exist_ok=True)
    shutil.copy(stats_path, assets / "norm_stats.json")
    shutil.copy(tokenizer, assets / "tokenizer.json")
    shutil.copytree(openfast, assets / "openfast", dirs_exist_ok=True)
    # How the policy was trained to act (cameras, image size, actions per query, episode length), so
    # `molmoact2-eval --checkpoint EXPORT` evaluates it that way with no other flag.
    (assets / SIM_SETTINGS_FILE).write_text(json.dumps(sim_settings(sim_cfg), indent=2))
    return ckpt
