"""What training and serving share: manifest schema, sampling and preprocessing (no Paddle)."""
