"""A random tiny transformers Molmo2 model and matching inputs, shared by the backbone parity tests."""
from __future__ import annotations

import numpy as np

VOCAB = 300
IMAGE_SIZE = 42  # 3x3 patches -> 2x2 pooled tokens with -1 padding on the bottom/right, as at 378 px
TOKENS_PER_IMAGE = 4


def tiny_molmo2(seed: int = 0, save_dir: str | None = None):
    import torch
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = Molmo2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=14),
        adapter_config=dict(vision_feature_layer=[3, 1], hidden_size=32, num_attention_heads=4,
                            num_key_value_heads=4, head_dim=8, intermediate_size=48, text_hidden_size=64),
        text_config=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         vocab_size=VOCAB, additional_vocab_size=128, num_hidden_layers=3, intermediate_size=96,
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6}),
        image_start_token_id=VOCAB, image_end_token_id=VOCAB + 1, image_patch_id=VOCAB + 2,
        low_res_image_start_token_id=VOCAB + 4, frame_start_token_id=VOCAB + 7, frame_end_token_id=VOCAB + 8)
    model = Molmo2ForConditionalGeneration(cfg)
    with torch.no_grad():  # norms start at 1/0: perturb them so a wrong mapping cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model = model.float().eval()
    model.config._attn_implementation = "eager"
    if save_dir:
        model.save_pretrained(save_dir)
    return model


def make_inputs(seed: int = 0, batch: int = 2, n_images=(2, 1), text_len=(9, 14), pad_to=None):
    """Left-padded batch; example b has n_images[b] images (>= 2 in the first). Returns a dict of numpy arrays
    in our layout plus the raw images."""
    from molmoact2_jax.preprocessing.image import preprocess_images

    rng = np.random.default_rng(seed)
    rows, images, pooled, raw = [], [], [], []
    for b in range(batch):
        ids = list(rng.integers(2, VOCAB, 3))
        imgs = [rng.integers(0, 256, (rng.integers(30, 80), rng.integers(30, 80), 3), dtype=np.uint8)
                for _ in range(n_images[b])]
        for _ in imgs:
            ids += list(rng.integers(2, VOCAB, 2)) + [VOCAB] + [VOCAB + 2] * TOKENS_PER_IMAGE + [VOCAB + 1]
        ids += list(rng.integers(2, VOCAB, text_len[b]))
        rows.append(ids)
        if imgs:
            p, i = preprocess_images(imgs, size=IMAGE_SIZE)
        else:
            p, i = np.zeros((0, 9, 588), np.float32), np.zeros((0, 4), np.int32)
        images.append(p)
        pooled.append(i)
        raw.append(imgs)
    t = pad_to or max(len(r) for r in rows)
    n_img = max(max(n_images), 1)
    input_ids = np.full((batch, t), -1, np.int32)
    mask = np.zeros((batch, t), bool)
    img_arr = np.zeros((batch, n_img, 9, 588), np.float32)
    idx_arr = np.full((batch, n_img * TOKENS_PER_IMAGE, 4), -1, np.int32)
    for b, r in enumerate(rows):
        input_ids[b, t - len(r):] = r
        mask[b, t - len(r):] = True
        img_arr[b, :len(images[b])] = images[b]
        idx_arr[b, :len(pooled[b])] = pooled[b]
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0).astype(np.int32)
    return dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, images=img_arr,
                pooled_idx=idx_arr, n_images=list(n_images), raw_images=raw)


def takes_image_num_crops() -> bool:
    """transformers >= 5.25: image_token_pooling holds each image's own patch indices, with image_num_crops (it
    adds the offsets itself); earlier 5.x took indices into all images' patches."""
    import inspect

    from transformers import Molmo2ForConditionalGeneration
    return "image_num_crops" in inspect.signature(Molmo2ForConditionalGeneration.get_image_features).parameters


def hf_logits(model, inp, with_images=True):
    """Runs the transformers model on the same batch (global pooling indices, as its processor builds them)."""
    import torch

    ids = np.where(inp["attention_mask"], inp["input_ids"], 0)
    kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(inp["attention_mask"], dtype=torch.long),
                  position_ids=torch.tensor(inp["position_ids"], dtype=torch.long))
    if with_images:
        per_image = takes_image_num_crops()
        pix, pool, grids, offset = [], [], [], 0
        n_patches = inp["images"].shape[2]
        for b, n in enumerate(inp["n_images"]):
            for j in range(n):
                pix.append(inp["images"][b, j])
                local = inp["pooled_idx"][b, j * TOKENS_PER_IMAGE:(j + 1) * TOKENS_PER_IMAGE]
                pool.append(np.where(local >= 0, local - j * n_patches + (0 if per_image else offset), -1))
                grids.append([2, 2, 0, 0])
                offset += n_patches
        is_img = np.isin(ids, [VOCAB, VOCAB + 1, VOCAB + 2]) & inp["attention_mask"]
        kwargs.update(pixel_values=torch.tensor(np.stack(pix)), image_token_pooling=torch.tensor(
            np.concatenate(pool), dtype=torch.long), image_grids=torch.tensor(grids, dtype=torch.long),
            mm_token_type_ids=torch.tensor(is_img.astype(np.int64)))
        if per_image:
            kwargs["image_num_crops"] = torch.ones(len(pix), dtype=torch.long)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()
