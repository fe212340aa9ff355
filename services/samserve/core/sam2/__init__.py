"""SAM 2 / 2.1 image models, built and run with the official ``sam2`` package."""
