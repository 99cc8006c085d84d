"""Training batches from converted datasets: the data_pipelines Grain pipeline, adapted to the model's batch.

config.data (when `source == "arrayrecord"`; configs/common.py says how each is given and found, and
training/run_setup.py resolves them into a DataPlan before the run starts):
  sources        {path: SHARD_DIR, weight: w, tag: norm tag} entries (a weighted mixture)
  eval_sources   held-out shard directories for the trainer's eval (default: the training sources, in order)
  norm_stats     path to norm_stats.json (molmoact2-data stats); default: each source's SHARD_DIR/norm_stats.json
  tokenizer      path to a tokenizer.json / folder (the checkpoint's text tokenizer)
  openfast       OpenFAST tokenizer folder (needed when model.action_mode is "discrete" or "both")
  seq_len, global_batch_size, seed, worker_count, augment, max_cameras
  style_weights  MolmoThink: {robot_action, robot_depth, robot_depth_action: weight} per example; depth
                 styles need shards converted with depth codes
  depth_code_input_noise_rate  MolmoThink: share of teacher-forced depth-code inputs replaced by random codes
                 (labels kept); applied in the train step (training/depth_noise.py)
  vlm_sources    optional .parquet/.jsonl vision-language files (data_pipelines/pipeline/vlm.py) for rehearsal;
                 each batch is robot data with probability `robot_share` (0.9 in the reference), else VLM data,
                 drawn from (seed, batch index) so the choice sequence is reproducible and resumable
Each process reads only its shard of every epoch (grain sharding by jax.process_index()); the iterator's state is
checkpointed with the train state, so a resumed run sees exactly the remaining batches.
"""
from __future__ import annotations

import jax
import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.norm_stats import NormStats
from data_pipelines.pipeline.robot_dataset import PipelineConfig, Source, build_robot_dataset
from data_pipelines.pipeline.vlm import VLMConfig, VLMTransformConfig, build_vlm_dataset
from data_pipelines.transforms.model_inputs import ModelInputs
from molmoact2_jax.preprocessing.image import preprocess_images
from molmoact2_jax.training import run_setup
from molmoact2_jax.training.model_batch import to_model_batch


class PipelineIterator:
    """Wraps a Grain iterator: `next()` gives model batches; get_state/set_state pass through."""

    def __init__(self, grain_iter):
        self.it = grain_iter

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return to_model_batch(next(self.it))

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def vlm_to_model_batch(b: dict, model_cfg) -> dict:
    """A VLM batch (uint8 images, no actions) in the model's batch layout: flow terms switched off."""
    v, ae = model_cfg.vit, model_cfg.action_expert
    masks = np.asarray(b["image_mask"], bool)
    n_max = masks.shape[1]
    patches, pooled = [], []
    for images, mask in zip(np.asarray(b["images"]), masks):
        p, idx = preprocess_images(list(images[mask]) or [images[0]], v.image_size, v.patch_size,
                                   model_cfg.connector.pool_size)
        n_tok = idx.shape[0] // len(p)
        full_p = np.zeros((n_max,) + p.shape[1:], np.float32)
        full_i = np.full((n_max * n_tok, idx.shape[1]), -1, np.int32)
        if mask.any():
            full_p[:len(p)], full_i[:len(idx)] = p, idx
        patches.append(full_p)
        pooled.append(full_i)
    n = masks.shape[0]
    out = to_model_batch(dict(b, image_patches=np.stack(patches), pooled_idx=np.stack(pooled),
                              actions=np.zeros((n, ae.max_action_horizon, ae.max_action_dim), np.float32),
                              action_dim_is_pad=np.ones((n, ae.max_action_dim), bool),
                              action_is_pad=np.ones((n, ae.max_action_horizon), bool)))
    out["has_actions"] = np.zeros(n, bool)
    return out


class MixedIterator:
    """Robot batches with probability `robot_share`, else VLM rehearsal batches (per batch, reproducible)."""

    def __init__(self, robot, vlm, robot_share: float, seed: int, model_cfg):
        self.robot, self.vlm, self.share, self.seed, self.model_cfg = robot, vlm, robot_share, seed, model_cfg
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        use_robot = np.random.default_rng([self.seed, self.index]).random() < self.share
        self.index += 1
        return next(self.robot) if use_robot else vlm_to_model_batch(next(self.vlm), self.model_cfg)

    def get_state(self):
        return {"index": self.index, "robot": self.robot.get_state(), "vlm": self.vlm.get_state()}

    def set_state(self, state):
        self.index = int(state["index"])
        self.robot.set_state(state["robot"])
        self.vlm.set_state(state["vlm"])


class _FitsSeqLen:
    """ModelInputs for the pipeline, whose too-long example names config.data.seq_len (run_setup checked a sample of
    each source before the run; a longer frame can still come)."""

    def __init__(self, inputs: ModelInputs):
        self.inputs = inputs

    def __call__(self, ex: dict) -> dict:
        try:
            return self.inputs(ex)
        except DataError as e:
            if e.key != "seq_len":
                raise
            n = len(self.inputs.tokens(ex)[0])
            raise DataError(f"config.data.seq_len={self.inputs.seq_len} is too short for this example of {n} tokens: "
                            f"set config.data.seq_len={n} or more (it resumes from the last checkpoint)",
                            episode=ex.get("episode_id"), key="seq_len") from None


def pipeline_config(cfg, split: str = "train", plan=None) -> PipelineConfig:
    """The robot pipeline (data_pipelines) of `config.data` for `split`: train (shuffled, augmented) or eval
    (in order, no augmentation); its examples are the model inputs (tokens, patches) of the shared transforms, made
    with the plan's tokenizers. `plan`: the run_setup.DataPlan of a prepared config; without one, the config is
    prepared here."""
    if plan is None:
        cfg, plan = run_setup.prepare(cfg, check_lengths=False)
    if plan.kind != "arrayrecord":
        raise ValueError(f"config.data.source={cfg.data.source!r}: the robot pipeline reads converted shards")
    d = cfg.data
    if int(d.global_batch_size) % jax.process_count():
        raise ValueError(f"config.data.global_batch_size={d.global_batch_size} is not divisible by "
                         f"{jax.process_count()} processes")
    eval_split = split != "train"
    sources = plan.eval_sources if eval_split and plan.eval_sources else plan.sources
    stats = NormStats.load(plan.norm_stats)
    return PipelineConfig(
        sources=[Source(s.path, s.weight, s.tag) for s in sources],
        norm_stats=stats, batch_size=int(d.global_batch_size) // jax.process_count(),
        seed=int(d.seed) + (1 if eval_split else 0), worker_count=int(d.worker_count),
        shuffle=not eval_split,  # evaluation reads episodes in order (trajectory plots, stable metrics)
        transform=run_setup.transform_config(cfg, eval_split),
        model_inputs=_FitsSeqLen(run_setup.model_inputs(cfg, plan)))


def make(cfg, split: str = "train", plan=None):
    """The batch iterator of `split` for this process. `plan`: as for pipeline_config."""
    if plan is None:
        cfg, plan = run_setup.prepare(cfg, check_lengths=False)
    d, m = cfg.data, cfg.model
    pc = pipeline_config(cfg, split, plan)
    robot = PipelineIterator(iter(build_robot_dataset(pc)))
    if not d.vlm_sources or split != "train":
        return robot
    vc = VLMConfig(paths=[str(p) for p in d.vlm_sources], batch_size=pc.batch_size, seed=int(d.seed) + 2,
                   transform=VLMTransformConfig(image_size=m.vit.image_size, max_images=int(d.max_cameras),
                                                seq_len=int(d.seq_len), patch_size=m.vit.patch_size,
                                                pool_size=m.connector.pool_size), tokenizer=plan.text_tokenizer)
    return MixedIterator(robot, iter(build_vlm_dataset(vc)), float(d.robot_share), int(d.seed), m)
