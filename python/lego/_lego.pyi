"""Type stubs of lego._lego, the compiled core (python/src/lego_module.cpp)."""
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import grounding as grounding

__version__: str
PathLike = str | os.PathLike[str]
Media = Mapping[str, PathLike | Sequence[PathLike]] | Sequence[PathLike] | None

class Error(RuntimeError):
    """A lego failure. `kind`: invalid-argument, not-found, format, unsupported, plugin, io or torch."""
    kind: str

class Box:
    phrase: str
    box: list[float]
    """Relative to the medium (4 values [x1, y1, x2, y2], or 6 for a 3-D box)."""
    box_square: list[float]
    """As the model wrote it: relative to the frame it saw (for pictures, the padded square)."""
    absolute: list[float] | None
    """In the medium's unit (`unit`: "px" for pictures); None when no medium of the answer carries boxes."""
    unit: str | None
    medium: int | None
    """Index of the medium (in the order given) the box is on."""

class Span:
    phrase: str
    span: tuple[float, float]
    """Relative to the medium's duration."""
    seconds: tuple[float, float] | None
    medium: int | None

class Result:
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str
    """"eos", "stop", "length" or "context"."""
    boxes: list[Box]
    spans: list[Span]
    encode_ms: float
    prefill_ms: float
    decode_ms: float
    prompt_tokens: int
    generated_tokens: int

class Progress:
    stage: str
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    elapsed_s: float
    eta_s: float
    skipped_rows: int

class Model:
    @staticmethod
    def load(dir: PathLike, plugin_dirs: Sequence[PathLike] | None = None, device: str = "cpu",
             dtype: str = "float32") -> Model: ...
    def generate(self, prompt: str, media: Media = None, *, system: str | None = None, raw: bool = False,
                 max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, stop: Sequence[str] = (), stop_at_eos: bool = True,
                 seed: int = 0, media_seed: int = 0, stream: Callable[[str], Any] | None = None) -> Result: ...
    def stream(self, prompt: str, media: Media = None, **sampling: Any) -> Any: ...
    def encode(self, modality: str, input: PathLike | torch.Tensor, seed: int = 0) -> torch.Tensor: ...
    def preprocess(self, modality: str, path: PathLike, seed: int = 0) -> torch.Tensor: ...
    def placeholder(self, modality: str) -> str: ...
    @property
    def modalities(self) -> list[str]: ...
    @property
    def dir(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def system_prompt(self) -> str: ...

def plugins(plugin_dirs: Sequence[PathLike] | None = None) -> list[dict[str, Any]]: ...
def train(config: PathLike, overrides: Mapping[str, Any] = ..., resume: bool = False,
          progress: Callable[[Progress], Any] | None = None, notice: Callable[[str], Any] | None = None,
          plugin_dirs: Sequence[PathLike] | None = None) -> dict[str, Any]: ...
