"""TSM training, evaluation, export and import of PaddleVideo models."""
