#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus, tests/fuzz/corpus/<target>/, from the pinned Python environment.

Each seed is a small, valid (or nearly valid) input that gets the fuzzer past the first checks of its
reader: safetensors and torch.save files, shard indexes naming the files the shard_index target puts
beside them, INI files with --set lines, answers with boxes and spans, chat inputs, and tiny images,
videos and sounds made here with Pillow and PyAV. Run it again after changing it; the output is small
(a few hundred kB at most) and committed.

    ~/.cache/lego/venv/bin/python tests/fuzz/make_corpus.py
"""
import io
import json
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "corpus"
ROOT = HERE.parent.parent


def put(target: str, name: str, data: bytes) -> None:
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """Our own minimal writer, so that odd layouts (padding, empty tensors) can be made on purpose."""
    header, blobs, offset = {}, [], 0
    names = {np.float32: "F32", np.float16: "F16", np.int64: "I64", np.uint8: "U8", np.bool_: "BOOL", np.int8: "I8"}
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": names[arr.dtype.type], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds() -> None:
    put("safetensors", "f32_2x3", safetensors_bytes({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}))
    put("safetensors", "mixed", safetensors_bytes(
        {"a.bias": np.ones(3, np.float16), "a.ids": np.arange(4, dtype=np.int64), "mask": np.array([1, 0], np.bool_),
         "q": np.array([-1, 2], np.int8)}, {"format": "pt"}))
    put("safetensors", "empty_tensor", safetensors_bytes({"e": np.zeros((0, 4), np.float32), "s": np.zeros((), np.uint8)}))
    bf16 = b'{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}'
    put("safetensors", "bf16", struct.pack("<Q", len(bf16)) + bf16 + b"\x80\x3f\x00\x40")
    put("safetensors", "no_tensors", safetensors_bytes({}, {"k": "v"}))


def torch_bin_seeds() -> None:
    def save(name, obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        put("torch_bin", name, buf.getvalue())

    save("state_dict", {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float16)})
    base = torch.arange(8, dtype=torch.int64)
    save("views", {"whole": base, "slice": base[2:6], "strided": base[::2], "t": torch.ones(2, 3).t()})
    save("bf16_bool", {"x": torch.ones(2, dtype=torch.bfloat16), "m": torch.tensor([True, False])})
    save("not_a_dict", [torch.zeros(1)])


def shard_index_seeds() -> None:
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    def index(name, weight_map):
        put("shard_index", name, json.dumps({"metadata": {"total_size": 64}, "weight_map": weight_map}).encode())
    index("two_shards", {"a.weight": shard1, "a.bias": shard1, "b.weight": shard2})
    index("sub_folder", {"c.weight": "sub/inner.safetensors"})
    index("escape_link", {"d.weight": "escape.safetensors"})
    index("fifo", {"a.weight": "fifo.safetensors"})
    index("self", {"a.weight": "model.safetensors.index.json"})
    index("missing_tensor", {"zz": shard1})


def config_seeds() -> None:
    put("config", "tiny_ini", (ROOT / "configs/models/tiny.ini").read_bytes())
    put("config", "sets", b"[llm]\nhidden = 64\nlayers = 2 ; comment\n# a comment\nllm.heads=4\nimage.plugin = image\n"
                          b"train.lr=1e-5\n[model]\nmedia_order = image video sound\nflag = yes\n")
    put("config", "odd_keys", b"[a.b]\nc = 1\n[ spaced ]\nk=v=w\n.x=1\ny.=2\n")


def grounding_seeds() -> None:
    for i, text in enumerate([
        "The dog [0.655, 0.402, 0.998, 0.951] sleeps next to the cat [0.1,0.2,0.3,0.4].",
        "Two people [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8] and [0.2, 0.2, 0.9, 0.9] talk.",
        "A cube [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] in the scene.",
        "It happens at {0.05, 0.20} and again {0.5,0.45}.",
        "Out of range [-0.5, 1.5, .25, 3.] and {2, -1}!",
        "[1, 0, 0, 1]{0.1, 0.2}",
    ]):
        put("grounding", f"answer_{i}", text.encode())


def chat_template_seeds() -> None:
    put("chat_template", "plain", b"\x00\x01hello there\\what is in <im_start><im_patch><im_end> this image?\\")
    put("chat_template", "system", b"\x01custom system\\\x02hi\\there\\Where is the dog? [0.1, 0.2, 0.3, 0.4]\\")
    put("chat_template", "unicode", "\x00\x00Über café 東京 😀 <vi_start>###\\".encode())


def image_seeds() -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8))
    for fmt, name, kw in [("PNG", "rgb.png", {}), ("JPEG", "rgb.jpg", {"quality": 50}), ("BMP", "rgb.bmp", {}),
                          ("WEBP", "rgb.webp", {"quality": 50}), ("TIFF", "rgb.tif", {})]:
        buf = io.BytesIO()
        rgb.save(buf, fmt, **kw)
        put("image_reader", name, buf.getvalue())
    for mode, name in [("L", "grey.png"), ("RGBA", "alpha.png"), ("P", "palette.png")]:
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, "PNG")
        put("image_reader", name, buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).save(buf, "PNG")
    put("image_reader", "grey16.png", buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif.tobytes())
    put("image_reader", "exif_rotated.jpg", buf.getvalue())


def video_bytes(container: str, codec: str, frames: int = 6, size=(16, 12), rate: int = 5, rotate: int = 0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        st = out.add_stream(codec, rate=rate)
        st.width, st.height = size
        st.pix_fmt = "rgb8" if codec == "gif" else "yuv420p" if codec != "mjpeg" else "yuvj420p"
        if codec == "libx264":
            st.options = {"preset": "ultrafast", "g": "3"}
        if rotate:
            st.metadata["rotate"] = str(rotate)
        for i in range(frames):
            img = np.full((size[1], size[0], 3), (i * 40) % 256, dtype=np.uint8)
            img[:, : i + 1] = 255
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return buf.getvalue()


def video_seeds() -> None:
    put("video_reader", "h264.mp4", video_bytes("mp4", "libx264"))
    put("video_reader", "mpeg4.avi", video_bytes("avi", "mpeg4"))
    put("video_reader", "vp8.webm", video_bytes("webm", "libvpx"))
    put("video_reader", "mjpeg.mkv", video_bytes("matroska", "mjpeg", frames=3))
    put("video_reader", "anim.gif", video_bytes("gif", "gif", frames=3))


def audio_bytes(container: str, codec: str, rate: int = 8000, layout: str = "mono", seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    n = int(rate * seconds)
    t = np.arange(n) / rate
    channels = 1 if layout == "mono" else 2
    with av.open(buf, "w", format=container) as out:
        st = out.add_stream(codec, rate=rate, layout=layout)
        fmt = st.codec_context.codec.audio_formats[0].name
        samples = np.sin(2 * np.pi * 440 * t).astype(np.float32)
        samples = np.tile(samples, (channels, 1))
        frame_size = st.codec_context.frame_size or n
        for start in range(0, n, frame_size):
            chunk = samples[:, start:start + frame_size]
            if chunk.shape[1] < frame_size and st.codec_context.frame_size:
                chunk = np.pad(chunk, ((0, 0), (0, frame_size - chunk.shape[1])))
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            if fmt != "fltp":
                frame = av.AudioResampler(format=fmt, layout=layout, rate=rate).resample(frame)[0]
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return buf.getvalue()


def audio_seeds() -> None:
    put("audio_reader", "pcm.wav", audio_bytes("wav", "pcm_s16le"))
    put("audio_reader", "stereo.wav", audio_bytes("wav", "pcm_s16le", rate=11025, layout="stereo", seconds=0.05))
    put("audio_reader", "flac.flac", audio_bytes("flac", "flac"))
    put("audio_reader", "mp3.mp3", audio_bytes("mp3", "libmp3lame", rate=16000))
    put("audio_reader", "opus.ogg", audio_bytes("ogg", "libopus", rate=48000, seconds=0.06))
    put("audio_reader", "aac.m4a", audio_bytes("ipod", "aac", rate=16000))


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for make in (safetensors_seeds, torch_bin_seeds, shard_index_seeds, config_seeds, grounding_seeds,
                 chat_template_seeds, image_seeds, video_seeds, audio_seeds):
        make()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    count = sum(1 for f in OUT.rglob("*") if f.is_file())
    print(f"{count} seeds, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
