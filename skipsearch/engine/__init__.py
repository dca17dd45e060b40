"""The engine: loading a model, skipping sublayers, drafting, draft-and-verify decoding, the cost
model and timing. It needs torch, transformers and accelerate only, and imports no other layer."""
