"""Model inputs: token chunks, image chunks and the ModelInput container."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from ._common import (
    check_int,
    choice_field,
    converted_field,
    int_field,
    str_field,
    tag_field,
)
from ._numbers import to_numbers

__all__ = [
    "DmelChunk",
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]

_IMAGE_FORMATS = ("png", "jpeg")


def _tokens(value: object) -> list[int]:
    # One typed buffer (uint32 ids: int32 on the wire), list-like for readers; numpy input kept as is.
    return to_numbers(value, "I", "EncodedTextChunk.tokens")  # type: ignore[return-value]


@attrs.frozen
class EncodedTextChunk:
    """A run of already-tokenized text (``tokens``: a list, numpy array or torch tensor of ids)."""

    tokens: list[int] = converted_field(_tokens)
    type: Literal["encoded_text"] = tag_field("encoded_text")


    @property
    def length(self) -> int:
        """Number of tokens in the chunk."""
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        """Size of the tokens on the wire (4 bytes each), from the buffer length."""
        return 4 * len(self.tokens)

    @property
    def tokens_np(self) -> Any:
        """The tokens as a zero-copy numpy int32 view (the wire's type); imports numpy lazily."""
        tokens: Any = self.tokens
        return tokens.to_numpy()


def _image_bytes(where: str) -> Callable[[object], bytes]:
    def convert(value: object) -> bytes:
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if not isinstance(value, bytes):
            raise TypeError(f"{where} must be bytes (the raw file content), got {type(value).__name__}")
        return value

    return convert



@attrs.frozen
class ImageChunk:
    """An image given as raw bytes (base64 on the wire)."""

    data: bytes = converted_field(_image_bytes("ImageChunk.data"))
    format: Literal["png", "jpeg"] = choice_field(_IMAGE_FORMATS)
    expected_tokens: int | None = int_field(default=None, minimum=0)
    type: Literal["image"] = tag_field("image")



    @property
    def length(self) -> int:
        """Number of model tokens the image takes (needs ``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError("ImageChunk.expected_tokens must be set to compute the length of an image chunk")
        return self.expected_tokens


@attrs.frozen
class ImageAssetPointerChunk:
    """An image referenced by location (path or URL) instead of inline bytes."""

    location: str = str_field()
    format: Literal["png", "jpeg"] = choice_field(_IMAGE_FORMATS)
    expected_tokens: int | None = int_field(default=None, minimum=0)
    type: Literal["image_asset_pointer"] = tag_field("image_asset_pointer")




    @property
    def length(self) -> int:
        """Number of model tokens the image takes (needs ``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError(
                "ImageAssetPointerChunk.expected_tokens must be set to compute the length of an image chunk"
            )
        return self.expected_tokens


@attrs.frozen
class DmelChunk:
    """A serialized audio-feature tensor (opaque bytes; base64 on the wire)."""

    dmel: bytes = converted_field(_image_bytes("DmelChunk.dmel"))
    type: Literal["dmel"] = tag_field("dmel")


    @property
    def length(self) -> int:
        """Always raises ValueError, since the token count lives inside the serialized tensor header."""
        raise ValueError("the length of a DmelChunk is not known client-side (it is read by the server)")


ModelInputChunk = EncodedTextChunk | ImageChunk | ImageAssetPointerChunk | DmelChunk
_CHUNK_CLASSES = (EncodedTextChunk, ImageChunk, ImageAssetPointerChunk, DmelChunk)


def _chunks(value: object) -> list[ModelInputChunk]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"ModelInput.chunks must be a list of chunks, got {type(value).__name__}")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, _CHUNK_CLASSES):
            hint = " (use ModelInput.from_ints(tokens) for a plain token list)" if isinstance(item, int) else ""
            raise TypeError(
                "ModelInput.chunks must be a list of EncodedTextChunk/ImageChunk/ImageAssetPointerChunk/DmelChunk; "
                f"item {i} is a {type(item).__name__}{hint}"
            )
    return items


@attrs.frozen
class ModelInput:
    """The input sequence of a model: a list of chunks (text tokens, images)."""

    chunks: list[ModelInputChunk] = converted_field(_chunks)

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        """Build a ModelInput holding one text chunk with ``tokens``."""
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

    @classmethod
    def empty(cls) -> ModelInput:
        """A ModelInput with no chunks."""
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        """All tokens as one list (only for text-only inputs)."""
        if len(self.chunks) == 1 and isinstance(self.chunks[0], EncodedTextChunk):
            return self.chunks[0].tokens.tolist()  # type: ignore[attr-defined,no-any-return]  # a NumberArray
        out: list[int] = []
        for i, chunk in enumerate(self.chunks):
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(  # noqa: TRY004 - a valid chunk, just not convertible to ints
                    f"ModelInput.to_ints() needs text-only chunks; chunk {i} is a {type(chunk).__name__}"
                )
            out.extend(chunk.tokens)
        return out

    @property
    def length(self) -> int:
        """Total number of tokens (image chunks count ``expected_tokens``)."""
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        """Return a new ModelInput with ``chunk`` appended."""
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """Return a new ModelInput with one token appended (extending a trailing text chunk)."""
        check_int(token, "ModelInput.append_int(token)", minimum=0)
        if self.chunks and isinstance(self.chunks[-1], EncodedTextChunk):
            last = self.chunks[-1]
            return ModelInput(chunks=[*self.chunks[:-1], EncodedTextChunk(tokens=last.tokens + [token])])
        return ModelInput(chunks=[*self.chunks, EncodedTextChunk(tokens=[token])])
