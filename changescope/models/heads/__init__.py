"""Task heads that read the change tokens of an encoder."""

from changescope.models.heads.caption_decoder import CaptionDecoder

__all__ = ["CaptionDecoder"]
