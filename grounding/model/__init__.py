"""Grounding DINO model: image encoder, text encoder, feature enhancer, query selection, decoder."""
from grounding.model.grounding_dino import GroundingDINO, GroundingOutput
from grounding.model.image_encoder import ImageFeatures
from grounding.model.preprocess import preprocess_image

__all__ = ["GroundingDINO", "GroundingOutput", "ImageFeatures", "preprocess_image"]
