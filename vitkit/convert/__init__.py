"""Weight import from the formats people already have: timm state dicts and the official
DeiT/DINO/MAE releases (`timm.py`), the official Swin and torchvision MViT layouts (`official.py`),
Hugging Face model directories (`hf.py`)."""
