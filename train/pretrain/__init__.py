"""Pre-training: corpus, tokenizer, packing, data, objectives, optimiser, the Lightning module and the loop."""
