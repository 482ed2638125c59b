"""The SynthRef demo (`refbench demo`) and the ablation reproduction (`refbench reproduce`)."""
