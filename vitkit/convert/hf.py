"""Hugging Face transformers ViT/DeiT <-> vitkit (being written)."""
def looks_like_hf(state): return any(k.startswith(("vit.", "deit.", "embeddings.")) for k in state)
