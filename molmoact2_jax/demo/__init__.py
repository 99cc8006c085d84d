"""molmoact2-demo: the whole stack end to end on a CPU (molmoact2_jax/cli/demo.py is the command line).

settings.py  the recipe variant (configs/finetune.py:demo / demo_think) checked and resolved at start-up
pipeline.py  the stages both demos share: MetaWorld recording, conversion, tokenizers, training config, checkpoint
run.py       the closed-loop demo's eight stages
score.py     held-out action error and the closed-loop table against the mean-action and random policies
report.py    demo_summary.json, its plot and the exit code
think.py     the MolmoThink demo (demo_think)
forward.py   one backbone forward pass (molmoact2-forward)
"""
