"""The text side's tokenizer without TensorFlow: the preset's own SentencePiece model
(``assets/tokenizer/vocabulary.spm``) read by the ``sentencepiece`` package, with the steps of Keras
Hub's ``SigLIPPreprocessor`` redone in Python: canonical text (lower case, no punctuation, single
spaces), the pieces, the end token, padding with the pad token to the text tower's fixed length."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cbir.core.errors import ModelError

PUNCTUATION = re.compile(r"!|\"|#|\$|%|&|\\|'|\(|\)|\*|\+|,|-|\.|/|:|;|<|=|>|\?|@|\[|\\|\]|\^|_|`|{|\||}|~")
"""What ``SigLIPPreprocessor.canonicalize_inputs`` removes (big_vision's prompt canonicalisation)."""


def canonical(text: str) -> str:
    """Lower case, punctuation removed, runs of white space as one space, stripped."""
    return re.sub(r"\s+", " ", PUNCTUATION.sub("", text.lower())).strip()


class Tokenizer:
    """Texts -> token ids (N, ``length``) int32, as Keras Hub's SigLIP preprocessor makes them."""

    def __init__(self, vocabulary: Path, length: int) -> None:
        try:
            import sentencepiece
        except ImportError as exc:
            raise ModelError(f"text queries need the sentencepiece package ({exc})") from exc
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(vocabulary))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"cannot read the tokenizer {vocabulary}: {exc}") from exc
        self.length = length
        self.end = self._id("</s>")
        self.pad = self.end  # SigLIPTokenizer: the pad token is the end token

    def _id(self, piece: str) -> int:
        found = int(self._sp.piece_to_id(piece))
        if found == self._sp.unk_id() and piece != "<unk>":
            raise ModelError(f"the tokenizer has no {piece} token")
        return found

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), self.length), self.pad, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = list(self._sp.encode(canonical(text)))[: self.length - 1] + [self.end]
            out[row, : len(ids)] = ids
        return out
