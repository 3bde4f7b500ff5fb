"""Model training, evaluation and MLflow registry (issue 6)."""
