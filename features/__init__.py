"""Point-in-time features and labels (issue 5): one definition for batch and single-customer paths."""
