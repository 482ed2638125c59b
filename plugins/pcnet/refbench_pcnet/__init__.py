"""PCNet for refbench: Progressive Comprehension Network (Yang et al., NeurIPS 2024).

Registered as ``pcnet`` in the entry-point group ``refbench.models``; the model imports torch
and open_clip, so this package's top level stays light and imports nothing.
"""

__version__ = "0.1.0"
