"""MAP (Machine Pareidolia): one compiled fine-tuning step of a diffusion score network."""
