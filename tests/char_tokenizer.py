"""A 256-token character tokenizer for the tiny targets, built offline: one printable character per id."""

import string

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: the tiny targets' pad, bos and eos


def make_char_tokenizer(vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """Ids 0-2 are special; every other id decodes to one character (letters, digits, then Latin-1 / Latin Extended)."""
    num_chars = vocab_size - len(SPECIAL_TOKENS)
    latin = "".join(chr(code) for code in range(0xC0, 0x180))
    chars = (string.ascii_letters + string.digits + latin)[:num_chars]
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: len(SPECIAL_TOKENS) + index for index, char in enumerate(chars)})
    # BPE without merges splits text into characters; Fuse joins decoded characters without spaces
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
