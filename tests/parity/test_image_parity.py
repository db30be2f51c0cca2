"""The image branch against HF transformers: CLIP tower, preprocessing, and a whole image prompt (issue 3)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file, save_file

from conftest import ADDED_TOKENS, run_lego, save_hf_llama

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE, PATCH = 336, 14
TOKENS = (IMAGE_SIZE // PATCH) ** 2


def expand2square(img, fill):
    """LLaVA's padding of the released code (reference section 2), written here for the comparison."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


@pytest.fixture(scope="module")
def grounding_model(tmp_path_factory, sp_model):
    """A tiny GroundingGPT-shaped checkpoint (LLaMA + image projector), a tiny HF CLIP tower, and the
    lego model directory imported from them."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    base = tmp_path_factory.mktemp("grounding")
    gdir, cdir, ours = base / "groundinggpt", base / "clip", base / "lego"
    llama = save_hf_llama(gdir, sp_model, seed=5, max_position_embeddings=1024)
    cfg = json.loads((gdir / "config.json").read_text())
    cfg["mm_vision_select_layer"] = -2
    (gdir / "config.json").write_text(json.dumps(cfg))

    torch.manual_seed(6)
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, hidden_size=32,
                                            num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)).eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    clip.save_pretrained(cdir)

    projector = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64)).eval()
    state = load_file(str(gdir / "model.safetensors"))
    for k, v in projector.state_dict().items():
        state[f"model.mm_vision_projector.{k}"] = v.contiguous()
    save_file(state, str(gdir / "model.safetensors"), metadata={"format": "pt"})
    run_lego("import", "--from", "groundinggpt", "--in", gdir, "--clip", cdir, "--out", ours)
    return llama, clip, projector, ours


def make_images(dst, n=22):
    """Images of varied size and aspect: smooth gradients plus noise, so resampling differences show."""
    rng = np.random.default_rng(42)
    sizes = [(336, 336), (640, 480), (480, 640), (100, 300), (1000, 200), (57, 57), (1024, 768), (333, 335),
             (2000, 1000), (17, 900), (800, 800), (300, 100), (500, 375), (375, 500), (1280, 720), (64, 48),
             (1, 336), (999, 1001), (448, 224), (224, 448), (3, 4000), (4000, 3)]
    paths = []
    for i, (w, h) in enumerate(sizes[:n]):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 / max(w - 1, 1)), (y * 255 / max(h - 1, 1)), ((x + y) * 128 / max(w + h - 2, 1))], -1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        p = dst / f"img{i:02d}_{w}x{h}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def lego_encode(ours, image, out):
    run_lego("encode", "--model", ours, "--modality", "image", "--in", image, "--out", out)
    return load_file(str(out))


def test_clip_tower_matches_hf_hidden_state_minus_2(grounding_model, tmp_path):
    _, clip, projector, ours = grounding_model
    (image,) = make_images(tmp_path, 1)
    got = lego_encode(ours, image, tmp_path / "enc.safetensors")
    with torch.no_grad():
        hs = clip(got["input"].unsqueeze(0), output_hidden_states=True).hidden_states[-2][0, 1:]
        tokens = projector(hs)
    enc_diff = (got["encoder"] - hs).abs().max().item()
    tok_diff = (got["tokens"] - tokens).abs().max().item()
    print(f"CLIP hidden_states[-2] max abs diff {enc_diff:.3e}; projected tokens {tok_diff:.3e}")
    assert got["encoder"].shape == (TOKENS, 32)
    assert enc_diff <= 1e-4 and tok_diff <= 1e-4


def test_preprocessing_matches_expand2square_and_clip_image_processor(grounding_model, tmp_path):
    from transformers import CLIPImageProcessor

    *_, ours = grounding_model
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                   image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    fill = tuple(int(x * 255) for x in CLIP_MEAN)
    maxes, means = [], []
    for i, image in enumerate(make_images(tmp_path)):
        got = lego_encode(ours, image, tmp_path / f"e{i}.safetensors")["input"].numpy()
        ref = processor(expand2square(Image.open(image).convert("RGB"), fill), return_tensors="np")["pixel_values"][0]
        assert got.shape == ref.shape
        d = np.abs(got - ref)
        maxes.append(d.max())
        means.append(d.mean())
    print(f"preprocessing over {len(maxes)} images: max abs diff {max(maxes):.2e}, mean abs diff {np.mean(means):.2e}")
    # PIL's resize bit for bit: what is left is float rounding in the normalisation.
    assert max(maxes) <= 1e-5


def test_image_prompt_logits_match_a_python_composition(grounding_model, tmp_path):
    llama, clip, projector, ours = grounding_model
    (image,) = make_images(tmp_path, 1)
    pixels = lego_encode(ours, image, tmp_path / "enc.safetensors")["input"]
    dump = tmp_path / "logits.safetensors"
    out = run_lego("infer", "--model", ours, "--image", image, "--prompt", "Where is the dog in <image> ?",
                   "--max-new-tokens", "0", "--dump-logits", dump, "--json").stdout
    ids = json.loads(out)["prompt_token_ids"]
    start = ids.index(512 + ADDED_TOKENS.index("<im_start>"))
    assert ids[start + 1: start + 1 + TOKENS] == [512 + ADDED_TOKENS.index("<im_patch>")] * TOKENS
    assert ids[start + 1 + TOKENS] == 512 + ADDED_TOKENS.index("<im_end>")
    with torch.no_grad():
        feats = projector(clip(pixels.unsqueeze(0), output_hidden_states=True).hidden_states[-2][:, 1:])
        embeds = llama.model.embed_tokens(torch.tensor([ids]))
        embeds[0, start + 1: start + 1 + TOKENS] = feats[0]
        ref = llama(inputs_embeds=embeds).logits[:, -1].numpy()
    got = load_np(str(dump))["logits"]
    diff = np.abs(got - ref).max()
    print(f"image prompt ({len(ids)} tokens) logits max abs diff {diff:.3e}")
    assert diff <= 1e-4
