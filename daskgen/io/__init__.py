"""Reading datasets and writing daskgen's stores (model, samples)."""
