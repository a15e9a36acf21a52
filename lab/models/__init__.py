"""Models: the tokenizer (conv encoder/decoder around a multi-scale quantizer), the next-scale transformer,
the prediction heads (index vs bitwise) and the frozen text encoder."""
