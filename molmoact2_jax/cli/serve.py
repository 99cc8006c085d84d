"""`molmoact2-serve --checkpoint CKPT_DIR|WORKDIR [--host 127.0.0.1] [--port 8000] [--norm-tag TAG] ...`

Serves a policy over HTTP: `POST /act` with a JSON body (images, instruction, state; arrays json_numpy-encoded or
nested lists) answers `{"actions": (N, D) float32, "dt_ms", "action_shape"}`; `GET /health` says it is up. The
request keys and replies: docs/serving.md (and molmoact2_jax/inference/server.py); `molmoact2_jax.inference.
PolicyClient` speaks them from Python.

The port is bound before the model loads, so a port in use fails at once (one line, exit 2). A run directory
(WORKDIR with checkpoints/<step>/) serves its newest complete step, named on stderr. An export folder
(`molmoact2-export --out DIR`, ONNX or StableHLO) is served by molmoact2_jax.runtime through the same protocol; an
ONNX folder needs no JAX (continuous mode only).
"""
from __future__ import annotations

import sys

from molmoact2_jax.cli.common import CommandParser, fail
from molmoact2_jax.inference.errors import NonFiniteActionError
from molmoact2_jax.inference.server import LISTENING, PolicyService, PortError, attach, bind, warmup
from molmoact2_jax.runtime.export_folder import is_export_folder

PROG = "molmoact2-serve"
EXAMPLES = (
    "molmoact2-serve --checkpoint /tmp/ft                       # a run directory: its newest complete step",
    "molmoact2-serve --checkpoint /tmp/ft/checkpoints/2000 --host 0.0.0.0 --port 8000 --warmup",
    "molmoact2-serve --checkpoint hf_export/ --norm-tag so100_so101_molmoact2 --mode discrete",
    "molmoact2-serve --checkpoint /tmp/ft_onnx                  # an export folder (molmoact2-export)",
)


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, description=__doc__, examples=EXAMPLES)
    p.add_argument("--checkpoint", required=True,
                   help="params checkpoint / trainer step / HF folder, a run directory (its newest complete step), or an "
                        "export folder (molmoact2-export: export.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000,
                   help="TCP port (default: %(default)s); 0 picks a free one (printed at start-up)")
    p.add_argument("--norm-tag", default=None, help="tag used when a request names none")
    p.add_argument("--mode", choices=("continuous", "discrete"), default=None,
                   help="default: continuous when the checkpoint has an action expert, else discrete")
    p.add_argument("--think", action="store_true", help="MolmoThink depth reasoning with the adaptive cache")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: config flow.num_steps)")
    p.add_argument("--max-request-mb", type=float, default=32.0,
                   help="largest accepted request body in MiB; larger ones are refused (default: %(default)s)")
    p.add_argument("--no-strict-cameras", action="store_true",
                   help="accept any camera count (1..5) instead of the tag's camera_keys count")
    p.add_argument("--warmup", action="store_true", help="compile with a dummy request before serving")
    p.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                   help="for a trainer step directory: its EMA weights (auto: when the run kept them) or the raw "
                        "trained params")
    p.add_argument("--norm-stats", default=None,
                   help="norm_stats.json to use instead of the checkpoint's (for a checkpoint without assets)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (or tokenizer.model) to use instead of the checkpoint's")
    p.add_argument("--openfast", default=None,
                   help="OpenFAST action tokenizer folder to use instead of the checkpoint's (discrete mode)")
    return p


def _load(args):
    """The policy to serve: an export folder through molmoact2_jax.runtime (no JAX for ONNX), anything else through
    the JAX Policy (imported here: --help must not import jax)."""
    if is_export_folder(args.checkpoint):
        given = [f for f, v in (("--norm-stats", args.norm_stats), ("--tokenizer", args.tokenizer),
                                ("--openfast", args.openfast), ("--think", args.think)) if v]
        if given or args.mode == "discrete":
            raise ValueError(f"{args.checkpoint} is an export folder: it serves mode continuous with its own assets "
                             f"(remove {' '.join(given + (['--mode discrete'] if args.mode == 'discrete' else []))}"
                             f"; serve the checkpoint it came from for those)")
        from molmoact2_jax.runtime import load_exported   # lazy: onnxruntime, or jax for StableHLO
        policy = load_exported(args.checkpoint, strict_camera_count=not args.no_strict_cameras)
        if args.num_steps is not None and args.num_steps != policy.num_steps:
            raise ValueError(f"--num-steps {args.num_steps}: {args.checkpoint} runs the {policy.num_steps} Euler steps "
                             f"it was exported with (remove --num-steps, or re-export with --num-steps "
                             f"{args.num_steps})")
        return policy
    from molmoact2_jax.inference.policy import Policy   # lazy: imports jax; --help and exports must not
    return Policy.load(args.checkpoint, norm_stats=args.norm_stats, tokenizer=args.tokenizer,
                       action_tokenizer=args.openfast, strict_camera_count=not args.no_strict_cameras,
                       weights=args.weights)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:   # the port first: a port in use fails now, not after the (slow) model load
        server = bind(args.host, args.port)
    except PortError as e:
        return fail(PROG, e)
    serving = False
    try:
        try:
            policy = _load(args)
            mode = args.mode or ("continuous" if policy.has_expert else "discrete")
            service = PolicyService(policy, args.norm_tag, mode, args.think, args.num_steps)
            if args.warmup:   # a checkpoint producing NaN fails here, before it is served
                warmup(service)
        except (OSError, ValueError, NonFiniteActionError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return fail(PROG, msg)
        attach(server, service, int(args.max_request_mb * (1 << 20)))
        serving = True
    finally:
        if not serving:
            server.server_close()
    host, port = server.server_address[:2]
    print(f"{LISTENING}http://{host}:{port} (tags {sorted(policy.tags)})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
