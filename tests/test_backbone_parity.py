"""Our Flax backbone vs transformers' Molmo2ForConditionalGeneration on the same (imported) weights."""
import numpy as np
import pytest
import jax
import ml_collections

from hf_molmo2_fixture import hf_logits, make_inputs, tiny_molmo2
from molmoact2_jax.convert import molmo2
from molmoact2_jax.models.backbone import Backbone

pytestmark = pytest.mark.torch

REL_TOL = 1e-5   # measured 4.6e-7 (image+text and text-only logits vs transformers)


def max_rel_err(ours, ref, mask):
    ours, ref = ours[mask], ref[mask]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("molmo2_hf")
    model = tiny_molmo2(seed=0, save_dir=str(d))
    return str(d), model


def run_ours(params, cfg, inp, with_images=True):
    model = Backbone(ml_collections.FrozenConfigDict(cfg))
    kw = dict(attention_mask=inp["attention_mask"], position_ids=inp["position_ids"])
    if with_images:
        kw.update(images=inp["images"], pooled_idx=inp["pooled_idx"])
    return np.asarray(jax.jit(lambda p: model.apply(p, inp["input_ids"], **kw)["logits"])(params))


def test_import_matches_transformers_logits(hf_folder, tmp_path):
    folder, hf_model = hf_folder
    params, cfg = molmo2.import_molmo2(folder, str(tmp_path / "ckpt"))
    assert cfg.llm.vocab_size == 300 and cfg.llm.num_kv_heads == 2 and cfg.llm.rope_theta == 5e6

    inp = make_inputs(seed=1, n_images=(2, 1))  # >= 2 images, left padding
    err_img = max_rel_err(run_ours(params, cfg, inp), hf_logits(hf_model, inp), inp["attention_mask"])
    text = make_inputs(seed=2, n_images=(0, 0), text_len=(5, 17))
    err_txt = max_rel_err(run_ours(params, cfg, text, False), hf_logits(hf_model, text, False),
                          text["attention_mask"])
    print(f"max rel err: image+text {err_img:.2e}, text-only {err_txt:.2e}")
    assert err_img <= REL_TOL and err_txt <= REL_TOL


def test_export_roundtrip_loads_in_transformers(hf_folder, tmp_path):
    from transformers import Molmo2ForConditionalGeneration
    from molmoact2_jax.cli.convert import main

    folder, hf_model = hf_folder
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "export")
    assert main(["import-molmo2", folder, ckpt]) == 0
    assert main(["export-molmo2", ckpt, out]) == 0
    reloaded = Molmo2ForConditionalGeneration.from_pretrained(out, attn_implementation="eager").float().eval()
    inp = make_inputs(seed=3, n_images=(2, 1))
    ref = hf_logits(hf_model, inp)
    err = max_rel_err(hf_logits(reloaded, inp), ref, inp["attention_mask"])
    print(f"export -> from_pretrained max rel err {err:.2e}")
    assert err <= REL_TOL
    # Bit-exact weights after the round trip, whatever the split of the embedding tables.
    sd0, sd1 = hf_model.state_dict(), reloaded.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        np.testing.assert_array_equal(sd0[k].numpy(), sd1[k].numpy(), err_msg=k)


def test_cli_reports_missing_folder(tmp_path, capsys):
    from molmoact2_jax.cli.convert import main
    assert main(["import-molmo2", str(tmp_path / "nope"), str(tmp_path / "ck")]) == 2
    assert "nope" in capsys.readouterr().err


def test_imported_molmo2_is_an_init_from_start(hf_folder, tmp_path):
    """`config.init_from` = an `import-molmo2` checkpoint (the pre-training start): every backbone tensor is
    loaded (it saves the backbone's Flax variables, params/{vit,connector,llm}), the action expert stays fresh,
    nothing is left over; a checkpoint of another model is an error, not a silent fresh start."""
    from flax import traverse_util
    from molmoact2_jax.checkpoint_io.params import save_params
    from molmoact2_jax.inference import testing as T
    from molmoact2_jax.training.init_from import load_init_params

    folder, _ = hf_folder
    imported, cfg = molmo2.import_molmo2(folder, str(tmp_path / "ckpt"))
    cfg.action_expert.update(dict(hidden_size=32, num_heads=4, timestep_embed_dim=32, max_action_horizon=8))
    fresh = traverse_util.flatten_dict(T.init_params(cfg, seed=3), sep="/")
    run = ml_collections.ConfigDict({"init_from": str(tmp_path / "ckpt"), "init_fresh": ()})
    out = traverse_util.flatten_dict(load_init_params(run, traverse_util.unflatten_dict(dict(fresh), sep="/")),
                                     sep="/")
    want = traverse_util.flatten_dict(imported["params"], sep="/")
    assert {k for k in out if k.startswith("backbone/")} == {f"backbone/{k}" for k in want}
    for k, v in want.items():
        np.testing.assert_array_equal(np.asarray(out[f"backbone/{k}"]), np.asarray(v), err_msg=k)
    for k in (k for k in out if k.startswith("action_expert/")):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(fresh[k]), err_msg=k)
    save_params(str(tmp_path / "other"), {"head": {"kernel": np.ones((2, 2), np.float32)}}, cfg)
    run.init_from = str(tmp_path / "other")
    with pytest.raises(ValueError, match="none of its 1 tensors is a parameter of this model"):
        load_init_params(run, traverse_util.unflatten_dict(dict(fresh), sep="/"))
