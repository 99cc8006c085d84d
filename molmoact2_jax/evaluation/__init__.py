"""Closed-loop evaluation in simulation (MetaWorld, LIBERO) and scripted-expert recording to LeRobot v3.0.

Heavy dependencies (metaworld, mujoco, libero) are imported only when an environment is made.
"""
from molmoact2_jax.evaluation.config import CameraSpec, SimConfig, SuiteSpec, get_config, parse_suite
from molmoact2_jax.evaluation.errors import SimEvalError
from molmoact2_jax.evaluation.evaluator import EvalOptions, evaluate, wilson_interval
from molmoact2_jax.evaluation.policies import (ExpertPolicy, MeanActionPolicy, ModelPolicy, RandomPolicy, SimPolicy,
                                               check_checkpoint_fits, make_baseline)
from molmoact2_jax.evaluation.recorder import RecordOptions, record

__all__ = ["CameraSpec", "SimConfig", "SuiteSpec", "get_config", "parse_suite", "SimEvalError", "EvalOptions",
           "evaluate", "wilson_interval", "ExpertPolicy", "MeanActionPolicy", "ModelPolicy", "RandomPolicy",
           "SimPolicy", "check_checkpoint_fits", "make_baseline", "RecordOptions", "record"]
