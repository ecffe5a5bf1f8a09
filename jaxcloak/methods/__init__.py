"""The two published methods: FaceCloak (a personal mask) and MAP (a fine-tuned score network)."""
