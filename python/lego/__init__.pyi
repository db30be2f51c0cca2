from collections.abc import Iterator

from . import grounding as grounding
from ._lego import Box as Box, Error as Error, Model as Model, Progress as Progress, Result as Result
from ._lego import Span as Span, plugins as plugins, train as train

__version__: str

class Stream(Iterator[str]):
    result: Result | None
    def __next__(self) -> str: ...
