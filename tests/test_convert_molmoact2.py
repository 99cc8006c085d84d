"""MolmoAct2 HF folder <-> params checkpoint (bit-exact round trip, config, assets), transformers parity of
the Molmo2 backbone export, full PyTorch forward (logits + flow-sampled actions) on the export, bad folders and
bounded import memory."""
import json
import os
import tracemalloc

import chex
import numpy as np
import pytest
import jax
import ml_collections
import torch
from flax.core import meta

from molmoact2_jax.models.config import get_model_config
from molmoact2_jax.convert import molmo2, molmoact2_hf
from molmoact2_jax.cli.convert import main
from molmoact2_jax.convert.safetensors_io import SafetensorsReader
from molmoact2_jax.models.molmoact2 import MolmoAct2
from molmoact2_jax.preprocessing.image import preprocess_images
from molmoact2_jax.checkpoint_io import params as params_io
from hf_molmo2_fixture import takes_image_num_crops

pytestmark = pytest.mark.torch

REL_TOL = 1e-5   # measured: logits 1.3e-6 (Molmo2 export and the torch reference), actions 2.1e-7
TOKENS_PER_IMAGE = 4  # 42 px: 3x3 patches -> 2x2 pooled
_STATS3 = {"min": [-1.5, -2.5, 0.0], "max": [1.5, 2.5, 1.0], "mean": [0.0, 0.0, 0.5], "std": [0.5, 1.0, 0.5],
           "q01": [-1.0, -2.0, 0.0], "q99": [1.0, 2.0, 1.0], "mask": [True, True, False]}
NORM_STATS = {"format": "molmoact2_norm_stats.v1", "norm_mode": "q01_q99", "metadata_by_tag": {"tiny": {
    "action_key": "action", "state_keys": ["state"], "camera_keys": ["cam"], "normalize_gripper": False,
    "action_dim": 3, "action_horizon": 5, "n_action_steps": 4, "setup_type": "x", "control_mode": "y",
    "action_stats": _STATS3, "state_stats": _STATS3}}}   # a valid file: export-hf parses the norm stats it exports
TOKENIZER = {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1},
                                                             "unk_token": "<unk>"}}


def tiny_config(llm_layers=3, llm_hidden=64, llm_mlp=96, llm_heads=4, kv_heads=2, head_dim=16):
    cfg = get_model_config("tiny")
    m = cfg.llm
    m.num_layers, m.hidden_size, m.mlp_dim, m.num_heads, m.num_kv_heads, m.head_dim = (
        llm_layers, llm_hidden, llm_mlp, llm_heads, kv_heads, head_dim)
    m.rope_theta = 5e5
    ae = cfg.action_expert
    ae.hidden_size, ae.num_heads, ae.timestep_embed_dim, ae.max_action_horizon = 48, 4, 24, 6
    cfg.flow.num_steps = 10
    return cfg


def random_params(cfg, seed=0):
    """Random init with every constant leaf (zero gates / final layer, unit norms, zero biases) perturbed."""
    params = jax.tree.map(np.asarray, meta.unbox(jax.jit(MolmoAct2(cfg).init)(jax.random.PRNGKey(seed))))  # on model.fake_batch()
    rng = np.random.default_rng(seed)

    def perturb(x):
        x = np.array(x, np.float32)
        if np.all(x == x.flat[0]):
            x = x + rng.normal(0, 0.2, x.shape).astype(np.float32)
        return x

    return jax.tree.map(perturb, params)


def make_batch(cfg, seed=0, n_images=(2, 1)):
    """Left-padded prompts with BOS (= EOS id), images, an <|im_end|> and an <action_start>..<action_end> span, so
    the encoder mask has something to hide. Returns our batch and the transformers inputs."""
    t = cfg.tokens
    rng = np.random.default_rng(seed)
    rows, pix, pool, grids, images, pooled = [], [], [], [], [], []
    offset = 0
    per_image = takes_image_num_crops()
    for b, n in enumerate(n_images):
        ids = [t.eos_token_id] + list(rng.integers(2, 250, 3))
        raw = [rng.integers(0, 256, (rng.integers(30, 80), rng.integers(30, 80), 3), dtype=np.uint8)
               for _ in range(n)]
        for _ in raw:
            ids += list(rng.integers(2, 250, 2)) + [t.image_start] + [t.image_patch] * TOKENS_PER_IMAGE + [
                t.image_end]
        ids += list(rng.integers(2, 250, 5 + 4 * b)) + [t.eos_token_id, t.action_start,
                                                        t.action_token_start + 7, t.action_end]
        ids += list(rng.integers(2, 250, 2))
        rows.append(ids)
        p, i = preprocess_images(raw, size=cfg.vit.image_size)
        images.append(p)
        pooled.append(i)
        for j in range(n):
            pix.append(p[j])
            local = i[j * TOKENS_PER_IMAGE:(j + 1) * TOKENS_PER_IMAGE]
            pool.append(np.where(local >= 0, local - j * p.shape[1] + (0 if per_image else offset), -1))
            grids.append([2, 2, 0, 0])
            offset += p.shape[1]
    T = max(len(r) for r in rows)
    n_img = max(n_images)
    ids = np.full((len(rows), T), -1, np.int32)
    mask = np.zeros((len(rows), T), bool)
    img = np.zeros((len(rows), n_img, images[0].shape[1], 588), np.float32)
    idx = np.full((len(rows), n_img * TOKENS_PER_IMAGE, 4), -1, np.int32)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], mask[b, T - len(r):] = r, True
        img[b, :len(images[b])], idx[b, :len(pooled[b])] = images[b], pooled[b]
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32)
    batch = dict(input_ids=ids, attention_mask=mask, position_ids=pos, images=img, pooled_idx=idx)
    safe = np.where(mask, ids, 0)
    family = [t.image_start, t.image_end, t.image_patch]
    hf = dict(input_ids=torch.tensor(safe, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              position_ids=torch.tensor(pos, dtype=torch.long), pixel_values=torch.tensor(np.stack(pix)),
              image_token_pooling=torch.tensor(np.concatenate(pool), dtype=torch.long),
              image_grids=torch.tensor(grids, dtype=torch.long),
              mm_token_type_ids=torch.tensor((np.isin(safe, family) & mask).astype(np.int64)))
    if per_image:
        hf["image_num_crops"] = torch.ones(len(pix), dtype=torch.long)
    return batch, hf


def max_rel_err(ours, ref, mask=None):
    ours, ref = np.asarray(ours), np.asarray(ref)
    if mask is not None:
        ours, ref = ours[mask], ref[mask]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def all_tensors(folder):
    r = SafetensorsReader(folder)
    return {k: r[k] for k in r.keys()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A random tiny MolmoAct2 HF folder written by our export (sharded), plus release-only files."""
    root = tmp_path_factory.mktemp("molmoact2")
    cfg = tiny_config()
    params = random_params(cfg)
    src_ckpt = str(root / "src_ckpt")
    params_io.save_params(src_ckpt, params, cfg)
    hf0 = str(root / "hf0")
    s = molmoact2_hf.export_hf(src_ckpt, hf0, max_shard_bytes=300_000, progress=False, require_assets=False)
    assert s["shards"] > 1 and os.path.exists(os.path.join(hf0, "model.safetensors.index.json"))
    with open(os.path.join(hf0, "config.json")) as f:
        hf_cfg = json.load(f)
    hf_cfg["n_obs_steps"] = 1                         # release keys we do not model must survive the round trip
    hf_cfg["auto_map"] = {"AutoConfig": "configuration_molmoact2.MolmoAct2Config"}
    with open(os.path.join(hf0, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    with open(os.path.join(hf0, "norm_stats.json"), "w") as f:
        json.dump(NORM_STATS, f)
    with open(os.path.join(hf0, "tokenizer.json"), "w") as f:
        json.dump(TOKENIZER, f)
    return dict(root=root, cfg=cfg, params=params, hf0=hf0, hf_cfg=hf_cfg)


def test_import_export_roundtrip_is_bit_exact(release, tmp_path, capsys):
    hf0, cfg = release["hf0"], release["cfg"]
    ckpt, hf1 = str(tmp_path / "ckpt"), str(tmp_path / "hf1")
    assert main(["import-hf", hf0, ckpt]) == 0
    assert main(["export-hf", ckpt, hf1, "--max-shard-bytes", "300000"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "exported" in out and "float32" in out
    print(out)

    t0, t1 = all_tensors(hf0), all_tensors(hf1)
    assert t0.keys() == t1.keys()
    assert set(t0) == set(molmoact2_hf.hf_key_shapes(cfg))
    chex.assert_trees_all_equal(t0, t1, strict=True)  # strict: same dtype and shape too
    assert molmoact2_hf.ROPE_KEY in t0 and t0[molmoact2_hf.ROPE_KEY].shape == (cfg.llm.head_dim // 2,)
    # same shard layout -> the very same files
    names = sorted(n for n in os.listdir(hf0) if n.endswith(".safetensors"))
    assert names == sorted(n for n in os.listdir(hf1) if n.endswith(".safetensors")) and len(names) > 1
    for n in names + ["model.safetensors.index.json"]:
        assert open(os.path.join(hf0, n), "rb").read() == open(os.path.join(hf1, n), "rb").read(), n
    for n in ("config.json", "norm_stats.json", "tokenizer.json"):
        with open(os.path.join(hf0, n)) as a, open(os.path.join(hf1, n)) as b:
            assert json.load(a) == json.load(b), n
    # the imported params equal the random model's, and the config carries the ids / constants of config.json
    params, icfg = params_io.load_params(ckpt)
    chex.assert_trees_all_equal(params, release["params"])
    hf = release["hf_cfg"]
    assert icfg.tokens.action_start == hf["action_start_token_id"] == cfg.tokens.action_start
    assert icfg.tokens.image_patch == cfg.tokens.image_patch and icfg.tokens.base_vocab == cfg.tokens.base_vocab
    for field in ("hidden_size", "num_heads", "mlp_ratio", "max_action_horizon", "max_action_dim",
                  "timestep_embed_dim", "rope_theta"):
        assert icfg.action_expert[field] == cfg.action_expert[field], field
    assert icfg.llm.rope_theta == 5e5 and hf["max_action_horizon"] == 6 and "max_action_horizon" not in hf[
        "action_expert_config"]
    assert sorted(os.listdir(os.path.join(ckpt, "assets"))) == ["config.json", "norm_stats.json", "tokenizer.json"]


def test_bf16_export(release, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    molmoact2_hf.import_hf(release["hf0"], ckpt, progress=False)
    out = str(tmp_path / "bf16")
    assert main(["export-hf", ckpt, out, "--dtype", "bfloat16"]) == 0
    t = all_tensors(out)
    ref = all_tensors(release["hf0"])
    k = "model.action_expert.blocks.0.mlp.up_proj.weight"
    assert str(t[k].dtype) == "bfloat16" and t[molmoact2_hf.ROPE_KEY].dtype == np.float32
    np.testing.assert_allclose(t[k].astype(np.float32), ref[k], rtol=2 ** -8, atol=1e-6)  # bf16 rounding
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    # a bf16 folder imports too (params are widened to fp32)
    molmoact2_hf.import_hf(out, str(tmp_path / "ckpt16"), progress=False)
    p16, _ = params_io.load_params(str(tmp_path / "ckpt16"))
    w = np.asarray(p16["action_expert"]["blocks"]["mlp"]["up_proj"]["kernel"][0])
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w.T, t[k].astype(np.float32))


@pytest.fixture(scope="module")
def jax_reference(release):
    cfg, params = release["cfg"], release["params"]
    model = MolmoAct2(ml_collections.FrozenConfigDict(cfg))
    batch, hf_inputs = make_batch(cfg, seed=1)
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((2, cfg.action_expert.max_action_horizon, 32)).astype(np.float32)
    dim_valid = np.zeros((2, 32), bool)
    dim_valid[0, :7], dim_valid[1, :4] = True, True
    logits = np.asarray(jax.jit(lambda p, b: model.context(p, b)[0])(params, batch))
    b2 = dict(batch, action_dim_valid=dim_valid)
    actions = np.asarray(jax.jit(lambda p, b, n: model.sample_actions(p, b, noise=n))(params, b2, noise))
    return dict(batch=batch, hf_inputs=hf_inputs, noise=noise, dim_valid=dim_valid, logits=logits, actions=actions)


def test_molmo2_backbone_export_matches_transformers(release, jax_reference, tmp_path):
    from transformers import Molmo2ForConditionalGeneration
    out = str(tmp_path / "molmo2")
    molmo2.export_molmo2({"params": release["params"]["backbone"]}, out, cfg=release["cfg"])
    model = Molmo2ForConditionalGeneration.from_pretrained(out, attn_implementation="eager").float().eval()
    with torch.no_grad():
        ref = model(**jax_reference["hf_inputs"]).logits.numpy()
    err = max_rel_err(jax_reference["logits"], ref, jax_reference["batch"]["attention_mask"])
    print(f"Molmo2 export vs transformers: logits max rel err {err:.2e}")
    assert err <= REL_TOL


def test_torch_forward_on_export_matches_jax(release, jax_reference):
    from molmoact2_jax.convert.torch_ref.molmoact2 import MolmoAct2Torch
    ref = MolmoAct2Torch(release["hf0"])
    r = jax_reference
    actions, logits = ref.sample_actions(torch.tensor(r["noise"]), torch.tensor(r["dim_valid"]), **r["hf_inputs"])
    err_logits = max_rel_err(r["logits"], logits.numpy(), r["batch"]["attention_mask"])
    err_actions = max_rel_err(r["actions"], actions.numpy())
    print(f"torch MolmoAct2 on the export vs JAX: logits {err_logits:.2e}, actions {err_actions:.2e} (max rel)")
    assert err_logits <= REL_TOL and err_actions <= REL_TOL
    assert np.all(r["actions"][0, :, 7:] == 0) and np.all(r["actions"][1, :, 4:] == 0)
    assert np.abs(r["actions"]).max() > 0.1
    # the check is sensitive to the encoder mask: with BOS / <|im_end|> / the action span visible it fails
    ref.cfg.action_mode = "continuous"
    unmasked, _ = ref.sample_actions(torch.tensor(r["noise"]), torch.tensor(r["dim_valid"]), **r["hf_inputs"])
    assert max_rel_err(r["actions"], unmasked.numpy()) > 100 * REL_TOL


# ----------------------------------------------------------------------------------------------- bad folders
def _copy_folder(src, dst, edit):
    """Rewrites the folder into one file with `edit(tensors)` applied."""
    from safetensors.numpy import save_file
    os.makedirs(dst)
    tensors = edit(all_tensors(src))
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    for n in ("config.json", "norm_stats.json", "tokenizer.json"):
        with open(os.path.join(src, n), "rb") as a, open(os.path.join(dst, n), "wb") as b:
            b.write(a.read())
    return dst


@pytest.mark.parametrize("case", ["missing", "shape", "unknown", "inv_freq"])
def test_bad_folder_names_the_key(release, tmp_path, capsys, case):
    key = "model.transformer.blocks.1.mlp.ff_out.weight"

    def edit(t):
        if case == "missing":
            del t[key]
        elif case == "shape":
            t[key] = t[key][:, :-1].copy()
        elif case == "unknown":
            t["model.action_expert.blocks.9.mlp.up_proj.weight"] = t["model.action_expert.blocks.0.mlp.up_proj.weight"]
        else:
            t[molmoact2_hf.ROPE_KEY] = t[molmoact2_hf.ROPE_KEY] * 1.01
        return t

    src = _copy_folder(release["hf0"], str(tmp_path / "bad"), edit)
    ckpt = str(tmp_path / "ckpt")
    assert main(["import-hf", src, ckpt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    want = {"missing": key, "shape": key, "unknown": "model.action_expert.blocks.9.mlp.up_proj.weight",
            "inv_freq": molmoact2_hf.ROPE_KEY}[case]
    assert want in err[0] and src in err[0]
    assert not os.path.exists(os.path.join(ckpt, "params"))


def test_cli_errors_on_missing_folders(tmp_path, capsys):
    assert main(["import-hf", str(tmp_path / "nope"), str(tmp_path / "ck")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export-hf", str(tmp_path / "nockpt"), str(tmp_path / "out")]) == 2
    assert "nockpt" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- memory
def test_import_peak_memory_is_bounded(tmp_path):
    """16 equal LLM layers: the whole model is > 20x its largest tensor; the import's numpy peak stays < 6x.
    The model is depth-gated (Think, per-layer gates), so the gate keys round-trip here too."""
    cfg = tiny_config(llm_layers=16, llm_hidden=128, llm_mlp=2048, llm_heads=4, kv_heads=2, head_dim=32)
    cfg.action_expert.depth_gate = True
    ckpt0 = str(tmp_path / "ckpt0")
    params_io.save_params(ckpt0, random_params(cfg, seed=3), cfg)
    hf = str(tmp_path / "hf")
    molmoact2_hf.export_hf(ckpt0, hf, max_shard_bytes=8 << 20, progress=False, require_assets=False)
    shapes = molmoact2_hf.hf_key_shapes(cfg)
    largest = max(int(np.prod(s)) * 4 for s in shapes.values())
    total = sum(int(np.prod(s)) * 4 for s in shapes.values())
    assert total > 20 * largest

    molmoact2_hf._abstract_params(molmoact2_hf.molmoact2_config_from_hf(molmoact2_hf.read_config(hf)))  # warm jit
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        molmoact2_hf.import_hf(hf, str(tmp_path / "ckpt"), progress=False)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print(f"import peak traced memory {peak / 1e6:.1f} MB; largest tensor {largest / 1e6:.1f} MB; "
          f"model {total / 1e6:.1f} MB ({peak / largest:.1f}x largest)")
    assert peak < 6 * largest
    hf1 = str(tmp_path / "hf1")
    molmoact2_hf.export_hf(str(tmp_path / "ckpt"), hf1, max_shard_bytes=8 << 20, progress=False, require_assets=False)
    t0, t1 = all_tensors(hf), all_tensors(hf1)
    assert t0.keys() == t1.keys() and "model.action_expert_depth_gate.15.weight" in t0
    chex.assert_trees_all_equal(t0, t1)
    params, _ = params_io.load_params(str(tmp_path / "ckpt"))
    k = "model.transformer.blocks.11.mlp.ff_out.weight"
    np.testing.assert_array_equal(np.asarray(params["backbone"]["llm"]["blocks"]["down_proj"]["kernel"][11]).T,
                                  SafetensorsReader(hf)[k])



def test_load_hf_in_memory_equals_import(release):
    """molmoact2_hf.load_hf (what Policy.load uses on a release folder) writes nothing and gives import-hf's params."""
    params, cfg = molmoact2_hf.load_hf(release["hf0"])
    chex.assert_trees_all_equal(params, release["params"])
    assert cfg.llm.to_dict() == release["cfg"].llm.to_dict()
    assert cfg.tokens.to_dict() == release["cfg"].tokens.to_dict()
