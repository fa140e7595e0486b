"""Networks and their training: backbones, heads, augmentations, self-supervised pretraining,
fine-tuning."""
