"""The video and sound branches against reference implementations (issue 4): EVA + BLIP-2 Q-Former + video
Q-Former vs HF Blip2VisionModel / Blip2QFormerModel, ImageBind audio vs imagebind-unofficial, Kaldi fbank
vs torchaudio, frame sampling vs the reference formula and PyAV decoding."""
import importlib
import json
import sys
import types
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_lego, save_hf_llama

FRAMES, SIZE, PATCH = 8, 224, 14
IB_MEAN, IB_STD = -4.268, 9.138
# A tiny ImageBind (audio: width 32, 2 blocks; output 48); its other towers are kept whole, as released.
IMAGEBIND_SMALL = dict(video_frames=2, kernel_size=(2, 14, 14), out_embed_dim=48, vision_embed_dim=32, vision_num_blocks=1,
                       vision_num_heads=4, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4, text_embed_dim=32,
                       text_num_blocks=1, text_num_heads=4, depth_embed_dim=32, depth_num_blocks=1, depth_num_heads=4,
                       thermal_embed_dim=32, thermal_num_blocks=1, thermal_num_heads=4, imu_embed_dim=32,
                       imu_num_blocks=1, imu_num_heads=4)


def imagebind_model_module():
    """imagebind.models.imagebind_model without the package __init__ (which needs pytorchvideo)."""
    loaded = sys.modules.get("imagebind")
    if loaded is None or not hasattr(loaded, "__path__"):
        # find_spec refuses a stand-in already in sys.modules (its __spec__ is None): only ask without one.
        spec = importlib.util.find_spec("imagebind")
        if spec is None:
            pytest.skip("imagebind-unofficial is not installed")
        pkg = types.ModuleType("imagebind")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["imagebind"] = pkg
    return importlib.import_module("imagebind.models.imagebind_model")


def qformer(layers, cross_freq, encoder_width, seed):
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(seed)
    m = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                             intermediate_size=64, cross_attention_frequency=cross_freq,
                                             encoder_hidden_size=encoder_width)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "LayerNorm" in n or "layernorm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return m


def released_qformer_name(k):
    """One HF Blip2QFormerModel name -> the release's LAVIS BERT name; None for the text path's FFN, which
    the release removed."""
    if ".intermediate." in k or (".output." in k and "output_query" not in k and "attention.output" not in k):
        return None
    name = k.replace("layernorm.", "bert.embeddings.LayerNorm.").replace("encoder.layer.", "bert.encoder.layer.")
    return name.replace(".attention.attention.", ".attention.self.").replace(".crossattention.attention.", ".crossattention.self.")


def released_qformer_names(m, prefix):
    """HF Blip2QFormerModel tensors under the release's LAVIS BERT names (text FFN dropped, as released)."""
    out = {}
    for k, v in m.state_dict().items():
        name = released_qformer_name(k)
        if name is not None:
            out[prefix + name] = v.contiguous()
    # The release's vendored BERT keeps position_ids as a persistent buffer, so the checkpoint holds it.
    out[prefix + "bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    return out


@pytest.fixture(scope="module")
def av_model(tmp_path_factory, sp_model):
    from transformers import Blip2VisionConfig, Blip2VisionModel

    ib = imagebind_model_module()
    base = tmp_path_factory.mktemp("av")
    gdir, ours = base / "groundinggpt", base / "lego"
    save_hf_llama(gdir, sp_model, seed=9, max_position_embeddings=512)
    state = load_file(str(gdir / "model.safetensors"))
    # Checkpoints saved by older transformers (the release's) keep each layer's rotary inv_freq buffer.
    for layer in range(2):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)

    torch.manual_seed(10)
    eva = Blip2VisionModel(Blip2VisionConfig(image_size=SIZE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, qkv_bias=True)).eval()
    with torch.no_grad():
        for n, p in eva.named_parameters():
            if "layer_norm" in n or "post_layernorm" in n or n.endswith("_bias"):
                p.add_(0.1 * torch.randn_like(p))
    for k, v in eva.state_dict().items():
        if k.endswith("self_attn.qkv.bias"):
            # HF keeps one qkv bias; the release has q_bias and v_bias and no k bias: zero HF's k part.
            w = v.shape[0] // 3
            with torch.no_grad():
                v[w:2 * w] = 0
            layer = k.split(".")[2]
            state[f"model.visual_encoder.blocks.{layer}.attn.q_bias"] = v[:w].clone()
            state[f"model.visual_encoder.blocks.{layer}.attn.v_bias"] = v[2 * w:].clone()
            continue
        name = (k.replace("embeddings.class_embedding", "visual_encoder.cls_token")
                 .replace("embeddings.position_embedding", "visual_encoder.pos_embed")
                 .replace("embeddings.patch_embedding", "visual_encoder.patch_embed.proj")
                 .replace("encoder.layers.", "visual_encoder.blocks.").replace("self_attn.projection", "attn.proj")
                 .replace("self_attn.", "attn.").replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
                 .replace("post_layernorm", "ln_vision"))
        state["model." + name] = v.contiguous()
    image_qformer = qformer(2, 2, 32, 11)
    video_qformer = qformer(2, 1, 32, 12)
    state.update(released_qformer_names(image_qformer, "model.Qformer."))
    state.update(released_qformer_names(video_qformer, "model.video_Qformer."))
    torch.manual_seed(13)
    state["model.query_tokens"] = 0.02 * torch.randn(1, 4, 32)
    state["model.video_query_tokens"] = 0.02 * torch.randn(1, 8, 32)
    video_pe = torch.nn.Embedding(FRAMES, 32)
    llama_proj = torch.nn.Linear(32, 64)
    state["model.video_frame_position_embedding.weight"] = video_pe.weight.detach().clone()
    state["model.llama_proj.weight"], state["model.llama_proj.bias"] = llama_proj.weight.detach().clone(), llama_proj.bias.detach().clone()

    torch.manual_seed(14)
    imagebind = ib.ImageBindModel(**IMAGEBIND_SMALL).eval()
    with torch.no_grad():
        for n, p in imagebind.named_parameters():
            if "audio" in n and ("norm" in n or "bias_k" in n or "bias_v" in n or n.endswith("cls_token")):
                p.add_(0.1 * torch.randn_like(p))
    for k, v in imagebind.state_dict().items():
        state["model.audio_encoder." + k] = v.contiguous()  # all of ImageBind, as released
    audio_pe = torch.nn.Embedding(8, 48)
    audio_qformer = qformer(2, 1, 48, 15)
    audio_proj = torch.nn.Linear(32, 64)
    state.update(released_qformer_names(audio_qformer, "model.audio_Qformer."))
    state["model.audio_query_tokens"] = 0.02 * torch.randn(1, 4, 32)
    state["model.audio_position_embedding.weight"] = audio_pe.weight.detach().clone()
    state["model.audio_llama_proj.weight"], state["model.audio_llama_proj.bias"] = audio_proj.weight.detach().clone(), audio_proj.bias.detach().clone()
    save_file(state, str(gdir / "model.safetensors"), metadata={"format": "pt"})
    run_lego("import", "--from", "groundinggpt", "--in", gdir, "--out", ours, "--set", "video.eva_heads=4",
             "--set", "video.qformer_heads=4", "--set", "sound.imagebind_heads=4", "--set", "sound.qformer_heads=4")
    ref = dict(eva=eva, image_qformer=image_qformer, video_qformer=video_qformer, query_tokens=state["model.query_tokens"],
               video_query_tokens=state["model.video_query_tokens"], video_pe=video_pe, llama_proj=llama_proj,
               imagebind=imagebind, audio_pe=audio_pe, audio_qformer=audio_qformer,
               audio_query_tokens=state["model.audio_query_tokens"], audio_proj=audio_proj)
    return ref, ours


def make_video(path, frames=30, w=160, h=120, fps=10):
    import av

    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            y, x = np.mgrid[0:h, 0:w]
            img = np.stack([(x * 2 + i * 8) % 256, (y * 2 + i * 5) % 256, ((x + y) + i * 3) % 256], -1)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_wav(path, seconds, rate=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.normal(size=t.shape)
    data = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    data = np.repeat(data[:, None], channels, 1)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(data.tobytes())
    return data[:, 0].astype(np.float32) / 32768.0


def encode(ours, modality, media, out):
    run_lego("encode", "--model", ours, "--modality", modality, "--in", media, "--out", out)
    return load_file(str(out))


def test_video_branch_matches_hf_blip2_composition(av_model, tmp_path):
    ref, ours = av_model
    make_video(tmp_path / "v.mp4")
    got = encode(ours, "video", tmp_path / "v.mp4", tmp_path / "v.safetensors")
    pixels = got["input"]  # [3, T, 224, 224]
    t = pixels.shape[1]
    with torch.no_grad():
        frames = pixels.permute(1, 0, 2, 3)
        hidden = ref["eva"](frames, output_hidden_states=True).hidden_states[-1]
        # ln_vision is HF's post_layernorm, but with LAVIS's LayerNorm eps (1e-5) instead of HF's 1e-6.
        post = ref["eva"].post_layernorm
        image_embeds = torch.nn.functional.layer_norm(hidden, (32,), post.weight, post.bias, 1e-5)
        q = ref["image_qformer"](query_embeds=ref["query_tokens"].expand(t, -1, -1),
                                 encoder_hidden_states=image_embeds).last_hidden_state
        q = q + ref["video_pe"](torch.arange(t)).unsqueeze(1)
        feats = q.reshape(1, t * 4, 32)
        v = ref["video_qformer"](query_embeds=ref["video_query_tokens"], encoder_hidden_states=feats).last_hidden_state
        tokens = ref["llama_proj"](v)[0]
    fd = (got["encoder"] - feats[0]).abs().max().item()
    td = (got["tokens"] - tokens).abs().max().item()
    print(f"video branch: frame features max abs diff {fd:.3e}, tokens {td:.3e}")
    assert fd <= 1e-4 and td <= 1e-4


def test_sound_branch_matches_imagebind_and_hf_qformer(av_model, tmp_path):
    ref, ours = av_model
    make_wav(tmp_path / "a.wav", 5.0)
    got = encode(ours, "sound", tmp_path / "a.wav", tmp_path / "a.safetensors")
    with torch.no_grad():
        ib = ref["imagebind"]({"audio": got["input"]})["audio"]  # [3, 48]: per clip, as LEGO uses it
        feats = ib.unsqueeze(0) + ref["audio_pe"](torch.arange(3)).unsqueeze(0)
        q = ref["audio_qformer"](query_embeds=ref["audio_query_tokens"], encoder_hidden_states=feats).last_hidden_state
        tokens = ref["audio_proj"](q)[0]
    ed = (got["encoder"] - ib).abs().max().item()
    td = (got["tokens"] - tokens).abs().max().item()
    print(f"sound branch: ImageBind audio max abs diff {ed:.3e}, tokens {td:.3e}")
    assert ed <= 1e-4 and td <= 1e-4


@pytest.mark.parametrize("seconds", [5.0, 2.0, 1.3, 0.1])
def test_fbank_clips_match_torchaudio_kaldi(av_model, tmp_path, seconds):
    import torchaudio

    _, ours = av_model
    wav = make_wav(tmp_path / "a.wav", seconds, seed=int(seconds * 10))
    got = encode(ours, "sound", tmp_path / "a.wav", tmp_path / "a.safetensors")["input"]
    x = torch.from_numpy(wav)
    duration = len(wav) / 16000
    clips = []
    for i in range(3):
        start = max(duration - 2.0, 0) / 3 * i
        clip = x[int(start * 16000): int((start + 2.0) * 16000)].unsqueeze(0)
        clip -= clip.mean()  # in place, as the release does: later overlapping clips see it
        if clip.shape[1] < 400:
            clip = torch.nn.functional.pad(clip, (0, 400 - clip.shape[1]))
        fb = torchaudio.compliance.kaldi.fbank(clip, htk_compat=True, sample_frequency=16000, use_energy=False,
                                               window_type="hanning", num_mel_bins=128, dither=0.0,
                                               frame_length=25, frame_shift=10).t()
        fb = torch.nn.functional.pad(fb, (0, 204 - fb.shape[1])) if fb.shape[1] < 204 else fb[:, :204]
        clips.append(fb)
    ref = torch.stack(clips)
    ours_fb = got[:, 0] * IB_STD + IB_MEAN  # undo the normalisation: compare log-mel energies
    diff = (ours_fb - ref).abs().max().item()
    print(f"fbank {seconds:.1f} s: max abs diff {diff:.2e} (log-mel)")
    assert diff <= 1e-4


def test_sampled_frames_match_pyav_decoding(av_model, tmp_path):
    import av

    _, ours = av_model
    make_video(tmp_path / "v.mp4", frames=45, w=320, h=240)
    got = encode(ours, "video", tmp_path / "v.mp4", tmp_path / "v.safetensors")["input"]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1, 1)
    ours_rgb = ((got * std + mean) * 255).permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
    # Bilinear, as the release's reader (decord) scales; exact parity with decord is in test_video_decord_parity.py.
    # PyAV carries a newer libswscale whose rounding differs slightly, hence the loose bound.
    with av.open(str(tmp_path / "v.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24", width=SIZE, height=SIZE, interpolation="BILINEAR") for f in c.decode(video=0)]
    n = min(FRAMES, len(frames))
    indices = np.arange(0, len(frames), len(frames) / n).astype(int)
    ref = np.stack([frames[i] for i in indices]).astype(np.float32)
    assert ours_rgb.shape == ref.shape
    diff = np.abs(ours_rgb - ref).mean()
    print(f"sampled frames vs PyAV: mean abs pixel diff {diff:.3f} (0-255)")
    assert diff <= 1.0
