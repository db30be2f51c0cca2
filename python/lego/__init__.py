"""lego: multi-modal grounding LLMs (LEGO, arXiv 2401.06071) from Python.

A thin layer over the C++ core: `Model.load` opens a model directory with its modality plugins,
`Model.generate` answers a prompt about images, videos and sounds with boxes and spans, `Model.stream`
yields the answer as it is written, `Model.encode` turns a medium into LLM input embeddings, `train` runs a
training stage from an INI config and `grounding` reads and writes the box and span text. Every failure is a
`lego.Error` whose `kind` says what went wrong. See docs/python.md.
"""
import queue as _queue
import sys as _sys
import threading as _threading

import torch as _torch  # noqa: F401  (loads libtorch, whose symbols the extension uses)

from . import _lego
from ._lego import Box, Error, Model, Progress, Result, Span, grounding, plugins, train

__all__ = ["Box", "Error", "Model", "Progress", "Result", "Span", "Stream", "grounding", "plugins", "train"]
__version__ = _lego.__version__
_sys.modules[__name__ + ".grounding"] = grounding  # `from lego.grounding import parse`


class Stream:
    """The pieces of an answer as `Model.generate` writes them, from a thread of its own.

    Iterating yields text; `result` is the whole `Result` once iteration ends. An error of the request is
    raised from the iteration. Leaving the loop early lets the answer finish in the background.
    """

    _END = object()

    def __init__(self, model, prompt, media, kwargs):
        self._pieces = _queue.SimpleQueue()
        self._error = None
        self.result = None
        self._thread = _threading.Thread(target=self._run, args=(model, prompt, media, kwargs), daemon=True)
        self._thread.start()

    def _run(self, model, prompt, media, kwargs):
        try:
            self.result = _lego.Model.generate(model, prompt, media, stream=self._pieces.put, **kwargs)
        except BaseException as e:  # handed to the iterating thread
            self._error = e
        finally:
            self._pieces.put(Stream._END)

    def __iter__(self):
        return self

    def __next__(self):
        piece = self._pieces.get()
        if piece is Stream._END:
            self._pieces.put(Stream._END)  # further next() calls end too
            self._thread.join()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration
        return piece


def _stream(self, prompt, media=None, **kwargs):
    """Like generate(), but returns a `Stream` that yields the answer's text as it is written."""
    if "stream" in kwargs:
        raise TypeError("stream(): the pieces are what it yields; use generate(stream=...) for a callback")
    return Stream(self, prompt, media, kwargs)


Model.stream = _stream
