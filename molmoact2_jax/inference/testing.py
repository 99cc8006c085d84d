"""Small, self-contained policy ingredients for tests and benchmarks (no downloads): a BPE text tokenizer trained
on the fly, a random tiny/small MolmoAct2, a norm_stats.json dict and a fitted OpenFAST.

Not used by the serving code itself.
"""
from __future__ import annotations

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from molmoact2_jax.checkpoint_io.params import save_params
from molmoact2_jax.models.config import apply_overrides, get_model_config
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.token_layout import robot_token_ids
from molmoact2_jax.tokenizers.openfast import OpenFAST
from molmoact2_jax.tokenizers.text import TextTokenizer

CORPUS = ["The task is to pick up the red block and place it in the bowl.",
          "The setup is single franka robotic arm in droid.", "What action should the robot take?",
          "The current state of the robot is", "The expected control mode is absolute joint pose.",
          "Given these, first predict the depth map of the main image and then predict the action",
          "put the cup on the plate; open the drawer; close the lid", "Image 1 Image 2 Image 3 user assistant"] * 20

TAG = "tiny_arm"
ACTION_DIM = 7          # 6 joints + gripper (last dim, passed through un-normalized)
STATE_DIM = 7


def train_text_tokenizer(path: str, vocab_size: int = 400) -> str:
    """Byte-level BPE with `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` specials, saved as tokenizer.json."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tok.save(path)
    return path


def model_config(variant: str = "tiny", tokenizer=None, depth_gate: bool = False, **overrides):
    """`tiny` = the tiny model config (molmoact2_jax.models.config); `small` = a wider/deeper CPU config for benchmarks. Token ids are taken from
    `tokenizer` (a TextTokenizer) so the model and tokenizer agree."""
    cfg = get_model_config("tiny")
    if variant == "small":
        cfg.vit.update(dict(image_size=112, hidden_size=128, num_heads=4, head_dim=32, mlp_dim=256, num_layers=4))
        cfg.connector.update(dict(num_heads=4, head_dim=32, hidden_size=128, mlp_dim=256))
        cfg.llm.update(dict(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=2, head_dim=32, mlp_dim=768))
        cfg.action_expert.update(dict(hidden_size=128, num_heads=4, timestep_embed_dim=64,
                                      max_action_horizon=16))
        cfg.max_sequence_length = 2048
    elif variant != "tiny":
        raise ValueError(f"variant {variant!r}: expected tiny or small")
    if tokenizer is not None:
        lay = tokenizer.layout
        ids = robot_token_ids(lay.base_vocab)
        ids.pop("num_added_robot_tokens")
        cfg.tokens.update(ids)
        cfg.tokens.base_vocab = lay.base_vocab
        cfg.tokens.eos_token_id = lay.eos
        pad = tokenizer.backend.token_to_id("<|endoftext|>") if tokenizer.kind == "hf" else None
        cfg.tokens.pad_token_id = int(pad if pad is not None else lay.eos)
        cfg.llm.vocab_size = ids["vocab_size"]
    cfg.action_expert.depth_gate = depth_gate
    apply_overrides(cfg, overrides)
    return cfg


def init_params(cfg, seed: int = 0, expert_noise: float = 0.05):
    """Random params (unboxed). The expert's zero-initialised gates are perturbed so it reads its context."""
    model = MolmoAct2(cfg)
    batch = {k: jnp.asarray(v) for k, v in model.fake_batch().items()}
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), batch))
    if "action_expert" in params and expert_noise:
        rng = np.random.default_rng(seed + 1)   # numpy: eager jax.random would compile once per leaf shape
        flat, tree = jax.tree_util.tree_flatten_with_path(params["action_expert"])
        params["action_expert"] = jax.tree.unflatten(tree, [
            l if "depth_gate" in jax.tree_util.keystr(p) else
            jnp.asarray(np.asarray(l) + expert_noise * rng.standard_normal(l.shape).astype(np.float32))
            for p, l in flat])
    return params


def quick_params(cfg, seed: int = 0, scale: float = 0.02):
    """Random params of the model's shapes without compiling its init (jax.eval_shape only, seconds instead of
    minutes on a loaded CPU): for tests that need a real checkpoint on disk, not a well-trained-looking model."""
    model = MolmoAct2(cfg)
    batch = {k: jnp.asarray(v) for k, v in model.fake_batch().items()}
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(seed), batch))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def quick_checkpoint(ckpt_dir: str, num_cameras: int = 2, nan_expert: bool = False, openfast: bool = False,
                     **overrides) -> str:
    """A tiny params checkpoint with assets (norm_stats.json for TAG, tokenizer.json[, action_tokenizer/]) built
    from quick_params. `nan_expert`: every action-expert weight NaN, so the flow produces NaN actions through the
    real code path (for the non-finite guards)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    tok_path = os.path.join(ckpt_dir + ".tokenizer", "tokenizer.json")
    if not os.path.exists(tok_path):
        train_text_tokenizer(tok_path)
    cfg = model_config("tiny", TextTokenizer.from_file(tok_path), **overrides)
    params = quick_params(cfg)
    if nan_expert:
        params["action_expert"] = jax.tree.map(lambda a: np.full(a.shape, np.nan, a.dtype), params["action_expert"])
    h = cfg.action_expert.max_action_horizon
    stats = norm_stats(horizon=h, n_action_steps=min(5, h), num_cameras=num_cameras)
    return save_checkpoint(ckpt_dir, cfg, params, stats, tok_path, fit_openfast(horizon=h) if openfast else None)


def _feature_stats(rng, dim, names, gripper_dims=()):
    lo = rng.uniform(-2.0, -0.5, dim)
    hi = rng.uniform(0.5, 2.0, dim)
    mask = [i not in gripper_dims for i in range(dim)]
    return {"min": (lo - 0.1).tolist(), "max": (hi + 0.1).tolist(), "mean": ((lo + hi) / 2).tolist(),
            "std": ((hi - lo) / 4).tolist(), "q01": lo.tolist(), "q99": hi.tolist(), "mask": mask,
            "names": list(names), "count": 1000}


def norm_stats(tag: str = TAG, horizon: int = 8, n_action_steps: int = 5, action_dim: int = ACTION_DIM,
               state_dim: int = STATE_DIM, num_cameras: int = 2, seed: int = 0) -> dict:
    """A norm_stats.json dict (gripper = last dim, not normalized)."""
    rng = np.random.default_rng(seed)
    anames = [f"joint_{i}" for i in range(action_dim - 1)] + ["gripper"]
    snames = [f"joint_{i}" for i in range(state_dim - 1)] + ["gripper"]
    meta = {"action_key": "action", "state_keys": ["observation.state"],
            "camera_keys": [f"observation.images.cam{i}" for i in range(num_cameras)],
            "normalize_gripper": False, "action_dim": action_dim, "action_horizon": horizon,
            "n_action_steps": n_action_steps, "setup_type": "single tiny robotic arm in tests",
            "control_mode": "absolute joint pose",
            "action_stats": _feature_stats(rng, action_dim, anames, (action_dim - 1,)),
            "state_stats": _feature_stats(rng, state_dim, snames, (state_dim - 1,))}
    return {"format": "molmoact2_norm_stats.v1", "norm_mode": "q01_q99", "metadata_by_tag": {tag: meta}}


def fit_openfast(horizon: int = 8, action_dim: int = ACTION_DIM, vocab_size: int = 256, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, horizon)[None, :, None]
    chunks = [np.clip(np.sin(2 * np.pi * (t * rng.uniform(0.2, 1.0, (50, 1, action_dim))
                                        + rng.uniform(0, 1, (50, 1, action_dim)))), -1, 1) for _ in range(4)]
    return OpenFAST.fit(chunks, vocab_size=vocab_size, scale=10, time_horizon=horizon, action_dim=action_dim)


def make_parts(workdir: str, variant: str = "tiny", depth_gate: bool = False, seed: int = 0, horizon=None,
               num_cameras: int = 2, **overrides):
    """-> (cfg, params, norm_stats dict, TextTokenizer, OpenFAST)."""
    tok_path = os.path.join(workdir, "tokenizer.json")
    if not os.path.exists(tok_path):
        train_text_tokenizer(tok_path)
    tok = TextTokenizer.from_file(tok_path)
    cfg = model_config(variant, tok, depth_gate=depth_gate, **overrides)
    h = horizon or cfg.action_expert.max_action_horizon
    params = init_params(cfg, seed)
    stats = norm_stats(horizon=h, n_action_steps=min(5, h), num_cameras=num_cameras)
    return cfg, params, stats, tok, fit_openfast(horizon=h)


def save_checkpoint(ckpt_dir: str, cfg, params, stats: dict, tokenizer_path: str, openfast=None) -> str:
    """A params checkpoint (params_io layout) with assets/ (norm_stats.json, tokenizer.json, action_tokenizer/)."""
    save_params(ckpt_dir, params, cfg)
    assets = os.path.join(ckpt_dir, "assets")
    os.makedirs(assets, exist_ok=True)
    with open(os.path.join(assets, "norm_stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    shutil.copy(tokenizer_path, os.path.join(assets, "tokenizer.json"))
    if openfast is not None:
        openfast.save(os.path.join(assets, "action_tokenizer"))
    return ckpt_dir


def random_images(n: int, hw=(48, 64), seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), np.uint8) for _ in range(n)]
