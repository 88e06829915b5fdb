"""Model inputs: token chunks, image chunks and the ModelInput container."""

from __future__ import annotations

from typing import Literal, Union

import attrs

from ._common import check_choice, check_int, check_str, token_list

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
    return token_list(value, "EncodedTextChunk.tokens")


@attrs.frozen
class EncodedTextChunk:
    """A run of already-tokenized text."""

    tokens: list[int] = attrs.field(converter=_tokens)
    type: Literal["encoded_text"] = attrs.field(default="encoded_text")

    @type.validator
    def _check_type(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "EncodedTextChunk.type", ("encoded_text",))

    @property
    def length(self) -> int:
        """Number of tokens in the chunk."""
        return len(self.tokens)


def _image_bytes(where: str):  # type: ignore[no-untyped-def]
    def convert(value: object) -> bytes:
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if not isinstance(value, bytes):
            raise TypeError(f"{where} must be bytes (the raw file content), got {type(value).__name__}")
        return value

    return convert


def _expected_tokens(where: str):  # type: ignore[no-untyped-def]
    def convert(value: object) -> int | None:
        return check_int(value, where, minimum=0, optional=True)  # type: ignore[no-any-return]

    return convert


@attrs.frozen
class ImageChunk:
    """An image given as raw bytes (base64 on the wire)."""

    data: bytes = attrs.field(converter=_image_bytes("ImageChunk.data"))
    format: Literal["png", "jpeg"] = attrs.field()
    expected_tokens: int | None = attrs.field(default=None, converter=_expected_tokens("ImageChunk.expected_tokens"))
    type: Literal["image"] = attrs.field(default="image")

    @format.validator
    def _check_format(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "ImageChunk.format", _IMAGE_FORMATS)

    @type.validator
    def _check_type(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "ImageChunk.type", ("image",))

    @property
    def length(self) -> int:
        """Number of model tokens the image takes (needs ``expected_tokens``)."""
        if self.expected_tokens is None:
            raise ValueError("ImageChunk.expected_tokens must be set to compute the length of an image chunk")
        return self.expected_tokens


@attrs.frozen
class ImageAssetPointerChunk:
    """An image referenced by location (path or URL) instead of inline bytes."""

    location: str = attrs.field()
    format: Literal["png", "jpeg"] = attrs.field()
    expected_tokens: int | None = attrs.field(
        default=None, converter=_expected_tokens("ImageAssetPointerChunk.expected_tokens")
    )
    type: Literal["image_asset_pointer"] = attrs.field(default="image_asset_pointer")

    @location.validator
    def _check_location(self, attribute: attrs.Attribute, value: object) -> None:
        check_str(value, "ImageAssetPointerChunk.location")

    @format.validator
    def _check_format(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "ImageAssetPointerChunk.format", _IMAGE_FORMATS)

    @type.validator
    def _check_type(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "ImageAssetPointerChunk.type", ("image_asset_pointer",))

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

    dmel: bytes = attrs.field(converter=_image_bytes("DmelChunk.dmel"))
    type: Literal["dmel"] = attrs.field(default="dmel")

    @type.validator
    def _check_type(self, attribute: attrs.Attribute, value: object) -> None:
        check_choice(value, "DmelChunk.type", ("dmel",))

    @property
    def length(self) -> int:
        """Not computable client-side: the token count lives inside the serialized tensor header."""
        raise ValueError("the length of a DmelChunk is not known client-side (it is read by the server)")


ModelInputChunk = Union[EncodedTextChunk, ImageChunk, ImageAssetPointerChunk, DmelChunk]
_CHUNK_CLASSES = (EncodedTextChunk, ImageChunk, ImageAssetPointerChunk, DmelChunk)


def _chunks(value: object) -> list[ModelInputChunk]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"ModelInput.chunks must be a list of chunks, got {type(value).__name__}")
    items = list(value)  # type: ignore[call-overload]
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

    chunks: list[ModelInputChunk] = attrs.field(converter=_chunks)

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
            return list(self.chunks[0].tokens)
        out: list[int] = []
        for i, chunk in enumerate(self.chunks):
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(
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
            return ModelInput(chunks=[*self.chunks[:-1], EncodedTextChunk(tokens=[*last.tokens, token])])
        return ModelInput(chunks=[*self.chunks, EncodedTextChunk(tokens=[token])])
