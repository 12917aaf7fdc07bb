"""TSM video-classification inference service."""
